import Config

# Lowest llama.cpp log level forwarded to Logger (:debug | :info | :warning | :error | :none).
config :llama_cpp_ex, log_level: :warning

if config_env() == :test do
  # llama.cpp warns about every test model's unused special-token ids.
  config :llama_cpp_ex, log_level: :error
end
