defmodule LlamaCppEx.ServerSyntheticTest do
  # The synthetic benchmark model (bench/gen_model.sh: random weights, Q8_0,
  # 32k vocabulary): its logits are nearly flat, so greedy choices are often
  # near ties and any rounding difference shows. With the server's defaults
  # (one KV stream per slot, no flash attention) the tokens are exactly those
  # of the unbatched path, however prompts are split and batched.
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

  test "greedy tokens equal the unbatched path exactly, chunked and batched", %{model: model} do
    :rand.seed(:exsss, {1, 2, 3})
    prompts = for i <- 1..6, do: [1 | for(_ <- 1..(10 + 9 * i), do: 3 + :rand.uniform(31_000))]
    bias = %{2 => :neg_infinity}

    expected =
      for p <- prompts do
        {:ok, ctx} = Context.create(model, n_ctx: 256, n_threads: 2, flash_attn: false)
        {:ok, s} = Sampler.create(model, temp: 0.0, logit_bias: bias)
        {:ok, c} = Context.generate(ctx, s, p, max_tokens: 16)
        c.tokens
      end

    {:ok, server} = Server.start_link(model: model, n_parallel: 6, n_ctx: 256, n_batch: 16, n_threads: 2)

    got =
      prompts
      |> Enum.map(&Task.async(fn -> Server.complete(server, &1, max_tokens: 16, temp: 0.0, logit_bias: bias) end))
      |> Task.await_many(:infinity)
      |> Enum.map(fn {:ok, c} -> c.tokens end)

    assert got == expected
    GenServer.stop(server)
  end
end
