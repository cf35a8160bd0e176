defmodule LlamaCppEx.Server.SavedSession do
  @moduledoc """
  A conversation taken out of a `LlamaCppEx.Server`'s prefix cache by
  `LlamaCppEx.Server.save_session/3`, to be put back, in the same server or
  in another one started with the same model and settings (after a restart,
  say), by `LlamaCppEx.Server.restore_session/2`.

  It holds the conversation's `:session` id and `:cache_scope`, the token ids
  its slot's cells hold (`:tokens`) and those cells (`:state`, a sequence
  state as `LlamaCppEx.State.save_sequence/2` makes). `:checksum` covers all
  of them: a saved session whose parts were mixed up or damaged is refused by
  `restore_session/2` (it guards against accidents, not against someone who
  forges a checksum: the state blob itself is always checked natively).

  It is a plain struct: keep it in memory, or as a binary (`to_binary/1`,
  `from_binary/1`) in a database or a file (`write_file/2`, `read_file/1`).

      {:ok, saved} = LlamaCppEx.Server.save_session(server, "user-42")
      :ok = LlamaCppEx.Server.SavedSession.write_file(saved, "user-42.session")

      # after a restart
      {:ok, saved} = LlamaCppEx.Server.SavedSession.read_file("user-42.session")
      :ok = LlamaCppEx.Server.restore_session(server, saved)
  """

  @enforce_keys [:session, :tokens, :state, :checksum]
  defstruct [:session, :tokens, :state, :checksum, scope: nil]

  @type t :: %__MODULE__{
          session: term(),
          scope: term(),
          tokens: [non_neg_integer()],
          state: binary(),
          checksum: non_neg_integer()
        }

  @tag :llama_cpp_ex_saved_session
  @version 1

  @doc false
  # Built by the server from a slot's cache entry and its saved sequence.
  @spec new(term(), term(), [non_neg_integer()], binary()) :: t()
  def new(session, scope, tokens, state) do
    %__MODULE__{
      session: session,
      scope: scope,
      tokens: tokens,
      state: state,
      checksum: sum(session, scope, tokens, state)
    }
  end

  @doc false
  # Whether the checksum is that of the parts.
  @spec intact?(t()) :: boolean()
  def intact?(%__MODULE__{} = s), do: s.checksum == sum(s.session, s.scope, s.tokens, s.state)

  defp sum(session, scope, tokens, state) do
    :erlang.crc32(:erlang.crc32(:erlang.term_to_binary({session, scope, tokens})), state)
  end

  @doc """
  The saved session as a binary (an Erlang external term, versioned).

      bin = LlamaCppEx.Server.SavedSession.to_binary(saved)
  """
  @spec to_binary(t()) :: binary()
  def to_binary(%__MODULE__{} = s) do
    :erlang.term_to_binary({@tag, @version, s.session, s.scope, s.tokens, s.state, s.checksum})
  end

  @doc """
  A saved session from `to_binary/1`. Anything else is
  `{:error, {:invalid_state, message}}`; atoms that this VM does not know
  are not created (a session id or scope holding one is refused).

      {:ok, saved} = LlamaCppEx.Server.SavedSession.from_binary(bin)
  """
  @spec from_binary(binary()) :: {:ok, t()} | {:error, {:invalid_state, String.t()}}
  def from_binary(bin) when is_binary(bin) do
    case safe_term(bin) do
      {@tag, @version, session, scope, tokens, state, checksum}
      when is_list(tokens) and is_binary(state) and is_integer(checksum) ->
        {:ok, %__MODULE__{session: session, scope: scope, tokens: tokens, state: state, checksum: checksum}}

      {@tag, version, _, _, _, _, _} ->
        {:error, {:invalid_state, "a saved session of format version #{inspect(version)}"}}

      _ ->
        {:error, {:invalid_state, "not a saved session"}}
    end
  end

  defp safe_term(bin) do
    :erlang.binary_to_term(bin, [:safe])
  rescue
    ArgumentError -> nil
  end

  @doc """
  Writes the saved session to `path` (through a temporary file next to it,
  renamed, so a crash never leaves half a file). File errors are
  `{:error, {:file_error, posix, path}}`.

      :ok = LlamaCppEx.Server.SavedSession.write_file(saved, "user-42.session")
  """
  @spec write_file(t(), Path.t()) :: :ok | {:error, LlamaCppEx.Error.reason()}
  def write_file(%__MODULE__{} = s, path) do
    path = IO.chardata_to_string(path)
    tmp = path <> ".tmp-#{System.unique_integer([:positive])}"

    with {:write, :ok} <- {:write, File.write(tmp, to_binary(s))},
         {:rename, :ok} <- {:rename, File.rename(tmp, path)} do
      :ok
    else
      {step, {:error, posix}} ->
        File.rm(tmp)
        {:error, {:file_error, posix, if(step == :write, do: tmp, else: path)}}
    end
  end

  @doc """
  Reads a saved session written by `write_file/2`. A missing file is
  `{:error, {:file_not_found, path}}`, another file error
  `{:error, {:file_error, posix, path}}`, a file that is not a saved session
  `{:error, {:invalid_state, message}}`.

      {:ok, saved} = LlamaCppEx.Server.SavedSession.read_file("user-42.session")
  """
  @spec read_file(Path.t()) :: {:ok, t()} | {:error, LlamaCppEx.Error.reason()}
  def read_file(path) do
    path = IO.chardata_to_string(path)

    case File.read(path) do
      {:ok, bin} -> from_binary(bin)
      {:error, :enoent} -> {:error, {:file_not_found, path}}
      {:error, posix} -> {:error, {:file_error, posix, path}}
    end
  end

  defimpl Inspect do
    def inspect(s, opts) do
      Inspect.Algebra.concat([
        "#LlamaCppEx.Server.SavedSession<",
        Inspect.Algebra.to_doc(s.session, opts),
        ", scope: ",
        Inspect.Algebra.to_doc(s.scope, opts),
        ", #{length(s.tokens)} tokens, #{byte_size(s.state)} bytes>"
      ])
    end
  end
end
