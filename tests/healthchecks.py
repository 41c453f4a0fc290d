"""The GitOps tools' health checks for OllamaModels, run as the tools run them: Argo CD's Lua script
(manifests/argocd/health.lua) and Flux's CEL `healthCheckExprs` (README.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
HEALTH_LUA = ROOT / "manifests" / "argocd" / "health.lua"
ARGOCD_CM = ROOT / "manifests" / "argocd" / "argocd-cm.yaml"
HEALTH_KEY = "resource.customizations.health.ollama.smithforge.dev_OllamaModel"
# argo-cd gitops-engine pkg/health: the codes a health script may return (Missing is Argo CD's own)
ARGOCD_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def argocd_health(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    """Run the health script as Argo CD's util/lua ExecuteHealthLua does: the resource as the global
    `obj` (JSON decoded into Lua tables), the returned table read as {status, message}, and a status
    outside Argo CD's codes turned into Unknown. gopher-lua is Lua 5.1, so LuaJIT (5.1) runs it."""
    from lupa import luajit21

    lua = luajit21.LuaRuntime(register_eval=False)
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(HEALTH_LUA.read_text() if script is None else script)
    if result is None:
        return {}
    health = {k: str(v) for k, v in dict(result).items()}
    if health.get("status") not in ARGOCD_STATUSES:
        return {"status": "Unknown", "message": "Lua returned an invalid health status"}
    return health


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def flux_health_exprs() -> dict[str, str]:
    """The `healthCheckExprs` entry for OllamaModel that README.md gives."""
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL):
        if "healthCheckExprs" in block:
            exprs = yaml.safe_load(block)["spec"]["healthCheckExprs"]
            return next(e for e in exprs if e["kind"] == "OllamaModel")
    raise AssertionError("README.md gives no healthCheckExprs")


def flux_health(obj: dict[str, Any], exprs: dict[str, str]) -> str:
    """Flux's verdict: inProgress, then failed, then current, the first true one wins, none is
    InProgress; the resource's top-level fields are the expressions' variables. An expression that
    cannot be evaluated (a field not there yet) makes Flux wait: InProgress."""
    import cel

    for key, verdict in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        if key not in exprs:
            continue
        try:
            if cel.evaluate(exprs[key], obj) is True:
                return verdict
        except RuntimeError:
            return "InProgress"
    return "InProgress"
