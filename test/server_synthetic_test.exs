defmodule LlamaCppEx.ServerSyntheticTest do
  # The synthetic benchmark model (bench/gen_model.sh: random weights, Q8_0,
  # 32k vocabulary): its logits are nearly flat, so greedy choices are often
  # near ties and any rounding difference shows. With the server's defaults
  # (one KV stream per slot, no flash attention) a request's tokens are
  # exactly those of the unbatched path decoding in the same chunks. Batched
  # with others they are not always: llama.cpp's Q8_0 matrix kernels round
  # differently with the number of rows in a batch, which depends on what else
  # runs in the step (seen: 1 prompt in 6 diverging after 5 tokens in some
  # runs). Exactness under batching is tested on stories260K (F32) in
  # server_test.exs.
  use ExUnit.Case, async: false
  @moduletag :slow
  # two compute threads on a shared 2-core machine: slow when anything else runs
  @moduletag timeout: 300_000

  alias LlamaCppEx.{Context, Sampler, Server}

  setup_all do
    {out, 0} = System.cmd(Path.expand("../bench/gen_model.sh", __DIR__), [])
    {:ok, model} = LlamaCppEx.Model.load(out |> String.trim() |> String.split("\n") |> List.last())
    %{model: model}
  end

  test "greedy tokens equal the unbatched path exactly, chunk by chunk", %{model: model} do
    :rand.seed(:exsss, {1, 2, 3})
    prompts = for i <- 1..6, do: [1 | for(_ <- 1..(10 + 9 * i), do: 3 + :rand.uniform(31_000))]
    bias = %{2 => :neg_infinity}

    expected =
      for p <- prompts do
        {:ok, ctx} = Context.create(model, n_ctx: 256, n_batch: 16, n_ubatch: 16, n_threads: 2, flash_attn: false)
        {:ok, s} = Sampler.create(model, temp: 0.0, logit_bias: bias)
        {:ok, c} = Context.generate(ctx, s, p, max_tokens: 16)
        c.tokens
      end

    {:ok, server} = Server.start_link(model: model, n_parallel: 6, n_ctx: 256, n_batch: 16, n_threads: 2)

    got =
      for p <- prompts do
        {:ok, c} = Server.complete(server, p, max_tokens: 16, temp: 0.0, logit_bias: bias)
        c.tokens
      end

    assert got == expected
    GenServer.stop(server)
  end
end
