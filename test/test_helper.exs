# Model-dependent suites are tagged; `make test` (and CI) include them all.
#   :model        - needs ../shared/models (stories260K.gguf)
#   :conformance  - needs the llama.cpp source tree (tokenizer test vectors)
#   :slow         - long-running (leak loops, big inputs)
ExUnit.start(exclude: [:model, :conformance, :slow])
