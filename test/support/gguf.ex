defmodule LlamaCppEx.TestGGUF do
  @moduledoc false
  # A small GGUF reader/writer for crafting test models: parse a file, change
  # metadata values (any size: the tensor data is re-aligned on write) or
  # tensor bytes, and write it back. Only what the tests need; see
  # ggml/docs/gguf.md in the llama.cpp tree for the format.

  @types %{
    0 => :u8,
    1 => :i8,
    2 => :u16,
    3 => :i16,
    4 => :u32,
    5 => :i32,
    6 => :f32,
    7 => :bool,
    8 => :string,
    9 => :array,
    10 => :u64,
    11 => :i64,
    12 => :f64
  }
  @codes Map.new(@types, fn {k, v} -> {v, k} end)

  defstruct [:version, :kvs, :tensors, :data]

  @doc "Parses a GGUF file's bytes."
  def parse(<<"GGUF", version::little-32, n_tensors::little-64, n_kv::little-64, rest::binary>> = bytes) do
    {kvs, rest} = take(n_kv, rest, &kv/1)
    {tensors, rest} = take(n_tensors, rest, &tensor_info/1)
    header = byte_size(bytes) - byte_size(rest)
    align = alignment(kvs)
    data_at = pad(header, align)

    %__MODULE__{
      version: version,
      kvs: kvs,
      tensors: tensors,
      data: binary_part(bytes, data_at, byte_size(bytes) - data_at)
    }
  end

  @doc "The bytes of a (possibly modified) GGUF."
  def encode(%__MODULE__{} = g) do
    head =
      IO.iodata_to_binary([
        "GGUF",
        <<g.version::little-32, length(g.tensors)::little-64, length(g.kvs)::little-64>>,
        Enum.map(g.kvs, fn {key, type, value} ->
          [str(key), <<Map.fetch!(@codes, type)::little-32>>, val(type, value)]
        end),
        Enum.map(g.tensors, fn t ->
          [
            str(t.name),
            <<length(t.dims)::little-32>>,
            Enum.map(t.dims, &<<&1::little-64>>),
            <<t.type::little-32>>,
            <<t.offset::little-64>>
          ]
        end)
      ])

    padding = pad(byte_size(head), alignment(g.kvs)) - byte_size(head)
    head <> :binary.copy(<<0>>, padding) <> g.data
  end

  @doc "The value of a metadata key (arrays as {elem_type, list}), or nil."
  def get(%__MODULE__{kvs: kvs}, key) do
    case List.keyfind(kvs, key, 0) do
      {_, _, value} -> value
      nil -> nil
    end
  end

  @doc "Sets (or adds) a metadata key."
  def put(%__MODULE__{kvs: kvs} = g, key, type, value) do
    kvs =
      if List.keymember?(kvs, key, 0),
        do: List.keyreplace(kvs, key, 0, {key, type, value}),
        else: kvs ++ [{key, type, value}]

    %{g | kvs: kvs}
  end

  @doc "Maps over the values of an array key."
  def update_array(%__MODULE__{} = g, key, fun) do
    {elem_type, values} = get(g, key)
    put(g, key, :array, {elem_type, fun.(values)})
  end

  @doc "Replaces entry `id` of the `tokenizer.ggml.tokens` array of a file's bytes with `text`."
  def replace_token(bytes, id, text) when is_binary(bytes) do
    bytes
    |> parse()
    |> update_array("tokenizer.ggml.tokens", &List.replace_at(&1, id, text))
    |> encode()
  end

  @doc "Replaces the first bytes of a tensor's data."
  def patch_tensor(%__MODULE__{tensors: tensors, data: data} = g, name, bytes) do
    %{offset: offset} = Enum.find(tensors, &(&1.name == name)) || raise "no tensor #{name}"
    <<pre::binary-size(offset), _::binary-size(byte_size(bytes)), post::binary>> = data
    %{g | data: pre <> bytes <> post}
  end

  @doc "The tensor info of `name`."
  def tensor(%__MODULE__{tensors: tensors}, name), do: Enum.find(tensors, &(&1.name == name))

  @doc "Writes a GGUF to a fresh temporary file (removed when the test exits) and returns its path."
  def write_tmp!(%__MODULE__{} = g), do: write_tmp!(encode(g))

  def write_tmp!(bytes) when is_binary(bytes) do
    path = Path.join(System.tmp_dir!(), "lcx_crafted_#{System.unique_integer([:positive])}.gguf")
    File.write!(path, bytes)
    ExUnit.Callbacks.on_exit(fn -> File.rm(path) end)
    path
  end

  # ---- reading ------------------------------------------------------------

  defp take(n, bin, fun), do: take(n, bin, fun, [])
  defp take(0, bin, _fun, acc), do: {Enum.reverse(acc), bin}

  defp take(n, bin, fun, acc) do
    {item, rest} = fun.(bin)
    take(n - 1, rest, fun, [item | acc])
  end

  defp kv(bin) do
    {key, <<code::little-32, rest::binary>>} = read_str(bin)
    type = Map.fetch!(@types, code)
    {value, rest} = read_val(type, rest)
    {{key, type, value}, rest}
  end

  defp tensor_info(bin) do
    {name, <<n_dims::little-32, rest::binary>>} = read_str(bin)

    {dims, <<type::little-32, offset::little-64, rest::binary>>} =
      take(n_dims, rest, fn <<d::little-64, r::binary>> -> {d, r} end)

    {%{name: name, dims: dims, type: type, offset: offset}, rest}
  end

  defp read_str(<<len::little-64, s::binary-size(len), rest::binary>>), do: {s, rest}

  defp read_val(:u8, <<v, r::binary>>), do: {v, r}
  defp read_val(:i8, <<v::signed, r::binary>>), do: {v, r}
  defp read_val(:u16, <<v::little-16, r::binary>>), do: {v, r}
  defp read_val(:i16, <<v::little-signed-16, r::binary>>), do: {v, r}
  defp read_val(:u32, <<v::little-32, r::binary>>), do: {v, r}
  defp read_val(:i32, <<v::little-signed-32, r::binary>>), do: {v, r}
  defp read_val(:u64, <<v::little-64, r::binary>>), do: {v, r}
  defp read_val(:i64, <<v::little-signed-64, r::binary>>), do: {v, r}
  # floats are kept as raw bits so that NaN and friends survive a round trip
  defp read_val(:f32, <<v::binary-size(4), r::binary>>), do: {{:raw, v}, r}
  defp read_val(:f64, <<v::binary-size(8), r::binary>>), do: {{:raw, v}, r}
  defp read_val(:bool, <<v, r::binary>>), do: {v != 0, r}
  defp read_val(:string, bin), do: read_str(bin)

  defp read_val(:array, <<code::little-32, n::little-64, rest::binary>>) do
    type = Map.fetch!(@types, code)
    {values, rest} = take(n, rest, &read_val(type, &1))
    {{type, values}, rest}
  end

  # ---- writing ------------------------------------------------------------

  defp str(s), do: [<<byte_size(s)::little-64>>, s]

  defp val(:u8, v), do: <<v>>
  defp val(:i8, v), do: <<v::signed>>
  defp val(:u16, v), do: <<v::little-16>>
  defp val(:i16, v), do: <<v::little-signed-16>>
  defp val(:u32, v), do: <<v::little-32>>
  defp val(:i32, v), do: <<v::little-signed-32>>
  defp val(:u64, v), do: <<v::little-64>>
  defp val(:i64, v), do: <<v::little-signed-64>>
  defp val(:f32, {:raw, v}), do: v
  defp val(:f32, v), do: <<v::little-float-32>>
  defp val(:f64, {:raw, v}), do: v
  defp val(:f64, v), do: <<v::little-float-64>>
  defp val(:bool, v), do: <<if(v, do: 1, else: 0)>>
  defp val(:string, s), do: str(s)

  defp val(:array, {type, values}),
    do: [<<Map.fetch!(@codes, type)::little-32, length(values)::little-64>>, Enum.map(values, &val(type, &1))]

  defp alignment(kvs) do
    case List.keyfind(kvs, "general.alignment", 0) do
      {_, _, a} when is_integer(a) and a > 0 -> a
      _ -> 32
    end
  end

  defp pad(n, align), do: div(n + align - 1, align) * align
end
