defmodule LlamaCppEx.TestGGUF do
  @moduledoc false
  # Rewrites the metadata of a GGUF file (v2/v3) for tests that need a crafted
  # model: the header is parsed, one key's value replaced, the header written
  # again and padded to the file's alignment, and the tensor data appended
  # unchanged (tensor offsets are relative to the data section).

  @u8 0
  @i8 1
  @u16 2
  @i16 3
  @u32 4
  @i32 5
  @f32 6
  @bool 7
  @string 8
  @array 9
  @u64 10
  @i64 11
  @f64 12

  @doc "Replaces entry `id` of the `tokenizer.ggml.tokens` array with `text`."
  def replace_token(bytes, id, text) do
    update_kv(bytes, "tokenizer.ggml.tokens", fn {@array, {@string, tokens}} ->
      {@array, {@string, List.replace_at(tokens, id, text)}}
    end)
  end

  @doc "Applies `fun` to the `{type, value}` of metadata key `key`."
  def update_kv(bytes, key, fun) do
    <<"GGUF", version::little-32, n_tensors::little-64, n_kv::little-64, rest::binary>> = bytes
    {kvs, rest} = read_n(rest, n_kv, &read_kv/1)
    {infos, rest} = read_n(rest, n_tensors, &read_tensor_info/1)
    header_len = byte_size(bytes) - byte_size(rest)
    align = Enum.find_value(kvs, 32, fn {k, {_, v}} -> k == "general.alignment" && v end)
    data = binary_part(bytes, pad(header_len, align), byte_size(bytes) - pad(header_len, align))
    true = Enum.any?(kvs, fn {k, _} -> k == key end)
    kvs = Enum.map(kvs, fn {k, tv} -> if k == key, do: {k, fun.(tv)}, else: {k, tv} end)

    header =
      IO.iodata_to_binary([
        "GGUF",
        <<version::little-32, n_tensors::little-64, n_kv::little-64>>,
        Enum.map(kvs, fn {k, {t, v}} -> [str(k), <<t::little-32>>, value(t, v)] end),
        infos
      ])

    header <> :binary.copy(<<0>>, pad(byte_size(header), align) - byte_size(header)) <> data
  end

  defp pad(n, align), do: div(n + align - 1, align) * align

  defp read_n(bin, n, fun) do
    Enum.map_reduce(List.duplicate(nil, n), bin, fn _, acc -> fun.(acc) end)
  end

  defp read_str(<<len::little-64, s::binary-size(len), rest::binary>>), do: {s, rest}

  defp read_kv(bin) do
    {key, <<type::little-32, rest::binary>>} = read_str(bin)
    {value, rest} = read_value(type, rest)
    {{key, {type, value}}, rest}
  end

  defp read_value(@string, bin), do: read_str(bin)

  defp read_value(@array, <<type::little-32, n::little-64, rest::binary>>) do
    {items, rest} = read_n(rest, n, &read_value(type, &1))
    {{type, items}, rest}
  end

  defp read_value(type, bin) do
    size = scalar_size(type)
    <<v::binary-size(size), rest::binary>> = bin
    {decode_scalar(type, v), rest}
  end

  defp scalar_size(t) when t in [@u8, @i8, @bool], do: 1
  defp scalar_size(t) when t in [@u16, @i16], do: 2
  defp scalar_size(t) when t in [@u32, @i32, @f32], do: 4
  defp scalar_size(t) when t in [@u64, @i64, @f64], do: 8

  # u32 alignment is read as a number; everything else stays raw bytes
  defp decode_scalar(@u32, <<v::little-32>>), do: v
  defp decode_scalar(_, raw), do: {:raw, raw}

  defp read_tensor_info(bin) do
    {_name, <<n_dims::little-32, rest::binary>>} = read_str(bin)
    <<_dims::binary-size(n_dims * 8), _type::little-32, _offset::little-64, rest::binary>> = rest
    {binary_part(bin, 0, byte_size(bin) - byte_size(rest)), rest}
  end

  defp str(s), do: [<<byte_size(s)::little-64>>, s]

  defp value(@string, s), do: str(s)
  defp value(@array, {t, items}), do: [<<t::little-32, length(items)::little-64>>, Enum.map(items, &value(t, &1))]
  defp value(@u32, v) when is_integer(v), do: <<v::little-32>>
  defp value(_, {:raw, raw}), do: raw
end
