defmodule LlamaCppEx.CorruptModelTest do
  # Corrupt GGUF files must give {:error, reason}, never take the VM down.
  use ExUnit.Case, async: true
  @moduletag :model

  import LlamaCppEx.TestHelpers

  setup_all do
    %{bytes: File.read!(model_path())}
  end

  defp write_tmp(bytes) do
    path = Path.join(System.tmp_dir!(), "lcx_corrupt_#{System.unique_integer([:positive])}.gguf")
    File.write!(path, bytes)
    on_exit(fn -> File.rm(path) end)
    path
  end

  test "a vocabulary with a duplicate token (a llama.cpp assertion) is an error", %{bytes: bytes} do
    # Rename byte token <0x01> to <0x00>: llama.cpp asserts that token texts are unique.
    path = write_tmp(:binary.replace(bytes, "<0x01>", "<0x00>"))
    assert {:error, {:load_failed, msg}} = LlamaCppEx.Model.load(path)
    assert msg =~ "assertion"
    # the VM and the library are fine
    {:ok, model} = LlamaCppEx.Model.load(model_path())
    assert {:ok, _} = LlamaCppEx.generate(model, "Once upon a time", max_tokens: 4)
  end

  test "parameters that make llama.cpp's kernels assert are caught by the warm-up", %{bytes: bytes} do
    # GGUF key/value: key string, then the u32 type (6 = float32), then the value.
    key = "llama.attention.layer_norm_rms_epsilon"
    {at, len} = :binary.match(bytes, key)
    <<pre::binary-size(at + len), 6::little-32, _eps::binary-size(4), post::binary>> = bytes
    path = write_tmp(<<pre::binary, 6::little-32, 0x7FC00000::little-32, post::binary>>)
    # a NaN epsilon trips GGML_ASSERT(eps >= 0.0f) in the RMS norm kernel
    assert {:error, {:load_failed, msg}} = LlamaCppEx.Model.load(path)
    assert msg =~ "warm-up decode failed"
    assert msg =~ "eps"
  end

  test "truncated files are errors", %{bytes: bytes} do
    for size <- [4, 8, 24, 100, 5_000, 40_000, div(byte_size(bytes), 2), byte_size(bytes) - 1] do
      path = write_tmp(binary_part(bytes, 0, size))
      assert {:error, reason} = LlamaCppEx.Model.load(path), "size #{size}"
      assert match?({:load_failed, _}, reason) or match?({:not_gguf, _}, reason)
    end
  end

  @tag :slow
  @tag timeout: 600_000
  test "random byte mutations of the header and metadata never crash", %{bytes: bytes} do
    :rand.seed(:exsss, {42, 42, 42})

    results =
      for _ <- 1..120 do
        mutated =
          Enum.reduce(1..:rand.uniform(8), bytes, fn _, acc ->
            pos = :rand.uniform(40_000) - 1
            <<pre::binary-size(pos), _, post::binary>> = acc
            <<pre::binary, :rand.uniform(256) - 1, post::binary>>
          end)

        path = write_tmp(mutated)

        case LlamaCppEx.Model.load(path) do
          {:ok, model} ->
            # whatever loaded must also be usable without crashing
            _ = LlamaCppEx.generate(model, "Once upon a time", max_tokens: 4)
            LlamaCppEx.Model.free(model)
            :ok

          {:error, _} ->
            :error
        end
      end

    assert :error in results
  end

  # ---- issue 7 (hardening): crafted vocabularies and strings ----

  alias LlamaCppEx.{TestGGUF, Tokenizer}

  defp random_text do
    for _ <- 1..:rand.uniform(40), into: "", do: Enum.random(["a", " ", "é", "<s>", "\n", "Once", "<0x41>", "▁", "🙂"])
  end

  test "random token types and texts load or fail, and the tokenizer survives", %{bytes: bytes} do
    :rand.seed(:exsss, {7, 7, 7})
    g = TestGGUF.parse(bytes)

    for _ <- 1..25 do
      crafted =
        g
        |> TestGGUF.update_array("tokenizer.ggml.token_type", fn types ->
          Enum.map(types, fn t -> if :rand.uniform(30) == 1, do: :rand.uniform(12) - 3, else: t end)
        end)
        |> TestGGUF.update_array("tokenizer.ggml.tokens", fn toks ->
          Enum.map(toks, fn t ->
            case :rand.uniform(300) do
              1 -> ""
              2 -> <<0xFF, 0xC3, :rand.uniform(255)>>
              3 -> String.duplicate("z", 5000) <> t
              _ -> t
            end
          end)
        end)

      case LlamaCppEx.Model.load(TestGGUF.write_tmp!(crafted), vocab_only: true) do
        {:ok, model} ->
          assert String.valid?(model.desc)
          _ = Tokenizer.encode(model, random_text())
          _ = Tokenizer.encode(model, random_text(), parse_special: true)
          _ = Tokenizer.decode(model, for(_ <- 1..20, do: :rand.uniform(model.n_vocab) - 1), unparse_special: true)
          _ = Tokenizer.token_to_piece(model, :rand.uniform(model.n_vocab) - 1, special: true)
          LlamaCppEx.Model.free(model)

        {:error, {:load_failed, msg}} ->
          assert String.valid?(msg)
      end
    end

    assert {:ok, _} = LlamaCppEx.generate(load_model!(), "Once upon a time", max_tokens: 4)
  end

  test "strings that are not UTF-8 come back valid, whatever they hold", %{bytes: bytes} do
    :rand.seed(:exsss, {8, 8, 8})
    g = TestGGUF.parse(bytes)

    for _ <- 1..20 do
      junk = for _ <- 1..:rand.uniform(64), into: <<>>, do: <<:rand.uniform(256) - 1>>

      crafted =
        g
        |> TestGGUF.put("general.name", :string, junk)
        |> TestGGUF.put("tokenizer.chat_template", :string, "{{ x }}" <> junk)
        |> TestGGUF.put(junk, :string, junk)

      {:ok, model} = LlamaCppEx.Model.load(TestGGUF.write_tmp!(crafted), vocab_only: true)
      assert String.valid?(model.chat_template)
      {:ok, meta} = LlamaCppEx.Model.metadata(model)
      assert Enum.all?(meta, fn {k, v} -> String.valid?(k) and String.valid?(v) end)
      LlamaCppEx.Model.free(model)
    end
  end
end
