# The seed document's "Usage in a Rails application", printing what it gets as JSON lines for the test.
require 'json'
require_relative 'ollama_api_client'

client = OllamaApiClient.new(base_url: ARGV[0], api_key: ARGV[1])

models = client.list_models
puts JSON.generate({ step: 'list', names: models['items'].map { |m| m['name'] } })

puts JSON.generate({ step: 'create', result: client.create_model('phi3', 'mini') })

model = client.get_model('phi3-mini')
puts JSON.generate({ step: 'get', state: model['state'], model: model })

puts JSON.generate({ step: 'refresh', result: client.refresh_model('phi3-mini') })

puts JSON.generate({ step: 'delete', result: client.delete_model('phi3-mini') })

puts JSON.generate({ step: 'missing', result: client.get_model('phi3-mini') })
