defmodule LlamaCppEx.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :llama_cpp_ex,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:llama_cpp_ex] ++ Mix.compilers(),
      deps: [],
      elixirc_paths: elixirc_paths(Mix.env()),
      test_coverage: [summary: [threshold: 0]],
      description: "Elixir bindings for llama.cpp through a C NIF",
      docs: [main: "readme", extras: ["README.md", "docs/architecture.md"]]
    ]
  end

  def application do
    [extra_applications: [:logger, :crypto, :inets, :jiffy], mod: {LlamaCppEx.Application, []}]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end

defmodule Mix.Tasks.Compile.LlamaCppEx do
  @moduledoc false
  # Builds the NIF into the Mix build path of whoever compiles this project, this
  # checkout or an application that depends on it (path:, git:):
  #
  #   <app_path>/obj/                         objects and their -MMD dependency files
  #   <app_path>/priv/llama_cpp_ex_nif.so     what LlamaCppEx.NIF loads from
  #                                           :code.priv_dir/1; `mix release` copies it
  #
  # where <app_path> is Mix.Project.app_path(), e.g. _build/dev/lib/llama_cpp_ex. Nothing
  # is written into the source tree (deps/llama_cpp_ex/ for a dependency). That is also
  # why the project has no priv/ directory: Mix would make <app_path>/priv a symlink to it.
  #
  # It runs before the Elixir compiler (first in `compilers:`) because compiling
  # LlamaCppEx.NIF loads the module, which runs its @on_load: the library must exist by
  # then, or the first compile logs that it could not be loaded.
  #
  # `scripts/llama_cpp.sh ensure` builds the pinned llama.cpp static libraries into the
  # user cache when they are missing and prints where they are; `make nif` then compiles
  # the changed C files (-MMD -MP) and links the library. When the manifest shows that
  # nothing changed since the last build (same llama.cpp libraries, build environment
  # and Erlang; no file in c_src/, the Makefile, mix.exs or scripts/llama_cpp.sh newer;
  # the library present), neither runs and the compiler returns :noop.
  #
  #   mix compile --force               rebuilds every object
  #   mix compile.llama_cpp_ex --asan   builds the AddressSanitizer variant,
  #                                     <app_path>/priv/llama_cpp_ex_nif_asan.so
  #                                     (objects in <app_path>/obj_asan; scripts/test_asan.sh)
  use Mix.Task.Compiler

  @nif "llama_cpp_ex_nif.so"
  @asan_nif "llama_cpp_ex_nif_asan.so"
  @manifest "compile.llama_cpp_ex"
  @manifest_vsn 1

  # What chooses the llama.cpp build (see scripts/llama_cpp.sh) or changes how make
  # compiles: when one of them changes, every object is rebuilt.
  @build_env ~w(LLAMA_CPP_SRC LLAMA_BACKEND LLAMA_CMAKE_ARGS LLAMA_PORTABLE LLAMA_CPP_CACHE
                XDG_CACHE_HOME HOME CC CXX CFLAGS CXXFLAGS NIF_CFLAGS)

  @impl true
  def run(args) do
    {opts, _, _} = OptionParser.parse(args, switches: [force: :boolean, asan: :boolean])
    force = Keyword.get(opts, :force, false)
    root = Path.dirname(__ENV__.file)
    app_path = Mix.Project.app_path()
    own_priv_dir!(root, app_path)

    if opts[:asan] do
      vars = llama_cpp!(root)
      make!(root, app_path, "nif-asan", vars, force)
      {:ok, []}
    else
      build(root, app_path, force)
    end
  end

  @impl true
  def manifests, do: [manifest()]

  @impl true
  def clean do
    app_path = Mix.Project.app_path()
    File.rm_rf!(Path.join(app_path, "obj"))
    File.rm_rf!(Path.join(app_path, "obj_asan"))
    File.rm(Path.join(app_path, "priv/#{@nif}"))
    File.rm(Path.join(app_path, "priv/#{@asan_nif}"))
    File.rm(manifest())
    :ok
  end

  defp build(root, app_path, force) do
    key = build_key()
    previous = read_manifest()

    if not force and up_to_date?(previous, key, root, app_path) do
      {:noop, []}
    else
      # Inputs changed after this moment are caught by the next run.
      started = System.os_time(:second)
      vars = llama_cpp!(root)
      make!(root, app_path, "nif", vars, force || build_changed?(previous, key, vars))
      write_manifest({key, vars, started})
      {:ok, []}
    end
  end

  defp up_to_date?({key, vars, built_at}, key, root, app_path) do
    File.regular?(Path.join(app_path, "priv/#{@nif}")) and
      Enum.all?(inputs(root, vars), fn file ->
        match?({:ok, %File.Stat{mtime: mtime}} when mtime < built_at, File.stat(file, time: :posix))
      end)
  end

  defp up_to_date?(_previous, _key, _root, _app_path), do: false

  # make tracks files, not flags or which llama.cpp the objects were compiled against.
  defp build_changed?({old_key, old_vars, _built_at}, key, vars), do: old_key != key or old_vars != vars
  defp build_changed?(nil, _key, _vars), do: false

  defp inputs(root, vars) do
    Path.wildcard(Path.join(root, "c_src/*")) ++
      Enum.map(["Makefile", "mix.exs", "scripts/llama_cpp.sh"], &Path.join(root, &1)) ++
      String.split(Map.get(vars, "LLAMA_LIBS", ""), " ", trim: true)
  end

  defp build_key do
    {Enum.map(@build_env, &System.get_env/1), erts_include_dir()}
  end

  defp erts_include_dir do
    Path.join([:code.root_dir() |> to_string(), "erts-#{:erlang.system_info(:version)}", "include"])
  end

  # <app_path>/priv must be a directory of its own. Mix makes it a symlink to the
  # project's priv/ when there is one, and earlier builds of this project put the library
  # there: remove such leftovers (only our files; priv/ itself only when that empties it).
  defp own_priv_dir!(root, app_path) do
    source_priv = Path.join(root, "priv")

    for name <- [@nif, @asan_nif], file = Path.join(source_priv, name), File.exists?(file) do
      case File.rm(file) do
        :ok -> Mix.shell().info("Removed #{file}, left by an older build")
        {:error, reason} -> Mix.raise("cannot remove the stale #{file}: #{:file.format_error(reason)}")
      end
    end

    _ = File.rmdir(source_priv)
    priv = Path.join(app_path, "priv")
    if match?({:ok, _}, File.read_link(priv)), do: File.rm!(priv)
    File.mkdir_p!(priv)
  end

  # The KEY=VALUE lines printed by `scripts/llama_cpp.sh ensure` (LLAMA_SRC, LLAMA_LIBS, ...).
  defp llama_cpp!(root) do
    script = Path.join(root, "scripts/llama_cpp.sh")

    case System.cmd(script, ["ensure"], cd: root, stderr_to_stdout: false) do
      {out, 0} ->
        for line <- String.split(out, "\n", trim: true),
            [key, value] <- [String.split(line, "=", parts: 2)],
            into: %{},
            do: {key, value}

      {_, status} ->
        Mix.raise("building llama.cpp failed (scripts/llama_cpp.sh ensure exited with #{status})")
    end
  end

  defp make!(root, app_path, target, vars, rebuild_all) do
    make = System.find_executable("gmake") || System.find_executable("make") || Mix.raise("make not found")

    args =
      ["--no-print-directory", "-s"] ++
        if(rebuild_all, do: ["-B"], else: []) ++
        [target, "MIX_APP_PATH=#{app_path}", "ERTS_INCLUDE_DIR=#{erts_include_dir()}"] ++
        Enum.map(vars, fn {key, value} -> "#{key}=#{value}" end)

    case System.cmd(make, args, cd: root, into: IO.stream(:stdio, :line), stderr_to_stdout: true) do
      {_, 0} -> :ok
      {_, code} -> Mix.raise("compiling the NIF failed (make #{target} exited with #{code})")
    end
  end

  defp manifest, do: Path.join(Mix.Project.manifest_path(), @manifest)

  defp read_manifest do
    with {:ok, binary} <- File.read(manifest()),
         {@manifest_vsn, key, vars, built_at} <- safe_binary_to_term(binary) do
      {key, vars, built_at}
    else
      _ -> nil
    end
  end

  defp safe_binary_to_term(binary) do
    :erlang.binary_to_term(binary)
  rescue
    ArgumentError -> nil
  end

  defp write_manifest({key, vars, built_at}) do
    File.mkdir_p!(Path.dirname(manifest()))
    File.write!(manifest(), :erlang.term_to_binary({@manifest_vsn, key, vars, built_at}))
  end
end
