-- Argo CD health check for ollama.smithforge.dev/OllamaModel: the value of
-- resource.customizations.health.ollama.smithforge.dev_OllamaModel in argocd-cm (argocd-cm.yaml
-- beside this file embeds this very text). Argo CD runs it with the resource as the global `obj`.
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local meta = obj.metadata or {}
local annotations = meta.annotations or {}
if annotations["ollama-gitops.dev/suspend"] == "true" then
  hs.status = "Suspended"
  hs.message = "suspended in its model file"
  return hs
end

local status = obj.status
if status == nil or status.state == nil then
  hs.status = "Progressing"
  hs.message = "waiting for ollama-gitops to take the model in"
  return hs
end

-- A status written for an older spec says nothing yet about this one.
if status.observedGeneration ~= nil and meta.generation ~= nil and status.observedGeneration < meta.generation then
  hs.status = "Progressing"
  hs.message = "waiting for ollama-gitops to observe generation " .. meta.generation
  return hs
end

local stalled = condition(status, "Stalled")
local reconciling = condition(status, "Reconciling")
local ready = condition(status, "Ready")
if (stalled ~= nil and stalled.status == "True") or status.state == "Failed" then
  hs.status = "Degraded"
  hs.message = (stalled ~= nil and stalled.status == "True" and stalled.message) or status.error or "the pull failed"
  return hs
end
if (reconciling ~= nil and reconciling.status == "True") or status.state == "Pending" or status.state == "Pulling" then
  hs.status = "Progressing"
  hs.message = (reconciling ~= nil and reconciling.message) or status.state
  return hs
end
if (ready ~= nil and ready.status == "True") or (ready == nil and status.state == "Ready") then
  hs.status = "Healthy"
  hs.message = "in Ollama" .. (status.formattedSize and (" (" .. status.formattedSize .. ")") or "")
  return hs
end
hs.status = "Progressing"
hs.message = (ready ~= nil and ready.message) or status.state
return hs
