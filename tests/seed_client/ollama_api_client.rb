# The Ruby client from the seed operator's API document (shared/seed/ollama-operator-api.md),
# unchanged: ollama-gitops must answer it as the seed's operator did.
require 'net/http'
require 'json'

class OllamaApiClient
  def initialize(base_url: 'http://localhost:8082', api_key: nil)
    @base_url = base_url
    @api_key = api_key
  end

  def list_models
    request(:get, '/api/v1/models')
  end

  def get_model(name)
    request(:get, "/api/v1/models/#{name}")
  end

  def create_model(name, tag)
    request(:post, '/api/v1/models', { name: name, tag: tag })
  end

  def delete_model(name)
    request(:delete, "/api/v1/models/#{name}")
  end

  def refresh_model(name)
    request(:post, "/api/v1/models/#{name}/refresh")
  end

  private

  def request(method, path, payload = nil)
    uri = URI.parse("#{@base_url}#{path}")

    http = Net::HTTP.new(uri.host, uri.port)

    request = case method
    when :get
      Net::HTTP::Get.new(uri.request_uri)
    when :post
      req = Net::HTTP::Post.new(uri.request_uri)
      req.body = payload.to_json if payload
      req
    when :delete
      Net::HTTP::Delete.new(uri.request_uri)
    end

    request['Content-Type'] = 'application/json' if payload
    request['X-API-Key'] = @api_key if @api_key

    response = http.request(request)

    return nil if response.code.to_i == 204

    if response.body && !response.body.empty?
      JSON.parse(response.body)
    end
  end
end
