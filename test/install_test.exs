# Installs this checkout the way a user does: a throwaway Mix project in a temp
# dir depends on it, compiles from nothing, generates text with `mix run`, and
# again from a release. Once as a `path:` dependency (the working tree as it is)
# and once as a `git:` dependency on a `git clone` of this checkout, which
# holds the last commit: uncommitted changes are not in the git case.
#
# The llama.cpp libraries come from the usual cache (HOME and XDG_CACHE_HOME
# are left alone), so each case compiles only the NIF and the Elixir code,
# for dev and again for prod. Neither case needs the network: a path or git
# dependency without Hex dependencies is fetched locally.
defmodule LlamaCppEx.InstallTest do
  use ExUnit.Case, async: false

  @moduletag :slow
  @moduletag :model
  @moduletag timeout: 1_200_000

  # scripts/test_asan.sh passes --exclude slow, but --include model still selects
  # this module; it builds and loads its own, normal NIF, so there is nothing
  # for the sanitizer to check here.
  if System.get_env("LLAMA_CPP_EX_NIF") == "llama_cpp_ex_nif_asan" do
    @moduletag skip: "installs the normal NIF; not run against the ASan build"
  end

  @root Path.expand("..", __DIR__)
  @app "install_check"
  # greedy continuation of "Once upon a time" (see greedy_reference_test.exs)
  @expected ", there was a little girl named Lily"
  # Mix settings of the `mix test` running this file that would leak into the
  # throwaway project's commands.
  @unset ~w(MIX_BUILD_PATH MIX_BUILD_ROOT MIX_DEPS_PATH MIX_EXS MIX_LOCKFILE MIX_TARGET LLAMA_CPP_EX_NIF)
  # each command's limit, so that a hang fails with its output (generous: a
  # command takes seconds, but minutes on a machine busy with other builds)
  @command_timeout_s 480

  setup do
    dir = Path.join(System.tmp_dir!(), "llama_cpp_ex_install_#{System.unique_integer([:positive])}")
    File.rm_rf!(dir)
    File.mkdir_p!(dir)
    on_exit(fn -> File.rm_rf!(dir) end)
    %{dir: dir}
  end

  test "as a path: dependency", %{dir: dir} do
    project = new_project!(dir, "path: #{inspect(@root)}")
    check_install!(project, @root)
  end

  test "as a git: dependency on a clone of HEAD", %{dir: dir} do
    clone = Path.join(dir, "llama_cpp_ex.git")
    cmd!(dir, "git", ["clone", "--quiet", @root, clone])
    project = new_project!(dir, "git: #{inspect(clone)}")
    check_install!(project, Path.join(project, "deps/llama_cpp_ex"))
  end

  # `source` is the dependency's source tree, which the build must leave alone.
  defp check_install!(project, source) do
    cmd!(project, "mix", ["deps.get"])
    source_before = source_status(source)

    out = cmd!(project, "mix", ["compile"])
    refute out =~ "could not load its native library", "the first `mix compile` could not load the NIF:\n#{out}"
    refute out =~ "building llama.cpp", "llama.cpp was rebuilt instead of taken from the cache:\n#{out}"

    nif = Path.join(project, "_build/dev/lib/llama_cpp_ex/priv/llama_cpp_ex_nif.so")
    assert {:ok, %File.Stat{type: :directory}} = File.lstat(Path.dirname(nif))
    assert {:ok, %File.Stat{type: :regular, mtime: built}} = File.stat(nif)

    cmd!(project, "mix", ["compile"])
    assert {:ok, %File.Stat{mtime: ^built}} = File.stat(nif), "an up-to-date `mix compile` rebuilt the NIF"

    out = cmd!(project, "mix", ["run", "-e", "InstallCheck.generate()"])
    assert out =~ "generated: " <> @expected, "`mix run` generated something else:\n#{out}"

    out = cmd!(project, "mix", ["release"], "prod")
    refute out =~ "could not load its native library", "compiling for the release could not load the NIF:\n#{out}"
    release = Path.join(project, "_build/prod/rel/#{@app}")
    assert [_] = Path.wildcard(Path.join(release, "lib/llama_cpp_ex-*/priv/llama_cpp_ex_nif.so"))

    out = cmd!(project, Path.join(release, "bin/#{@app}"), ["eval", "InstallCheck.generate()"], "prod")
    assert out =~ "generated: " <> @expected, "the release generated something else:\n#{out}"

    assert source_status(source) == source_before, "the build wrote into the dependency's source tree #{source}"
  end

  # What git sees changed, untracked or ignored there (a new directory such as priv/ is one line).
  defp source_status(source), do: cmd!(source, "git", ["status", "--porcelain", "--ignored"])

  defp new_project!(dir, dep) do
    project = Path.join(dir, @app)
    File.mkdir_p!(Path.join(project, "lib"))

    File.write!(Path.join(project, "mix.exs"), """
    defmodule InstallCheck.MixProject do
      use Mix.Project

      def project do
        [app: :#{@app}, version: "0.1.0", elixir: "~> 1.14", deps: [{:llama_cpp_ex, #{dep}}]]
      end

      def application, do: [extra_applications: [:logger]]
    end
    """)

    File.write!(Path.join(project, "lib/install_check.ex"), """
    defmodule InstallCheck do
      def generate do
        {:ok, _} = Application.ensure_all_started(:llama_cpp_ex)
        {:ok, model} = LlamaCppEx.Model.load(System.fetch_env!("INSTALL_CHECK_MODEL"))
        {:ok, text} = LlamaCppEx.generate(model, "Once upon a time", max_tokens: 16, temp: 0.0)
        IO.puts("generated: " <> text)
      end
    end
    """)

    project
  end

  # Runs `command args` in `dir` with MIX_ENV=env, stdout and stderr together;
  # fails with the whole output unless it exits with 0.
  defp cmd!(dir, command, args, env \\ "dev") do
    env = [
      {"MIX_ENV", env},
      {"INSTALL_CHECK_MODEL", LlamaCppEx.TestHelpers.model_path()} | Enum.map(@unset, &{&1, nil})
    ]

    {command, args} =
      case System.find_executable("timeout") do
        nil -> {command, args}
        timeout -> {timeout, ["--kill-after=10", "#{@command_timeout_s}", command | args]}
      end

    started = System.monotonic_time(:millisecond)
    {out, status} = System.cmd(command, args, cd: dir, env: env, stderr_to_stdout: true)
    took = "#{div(System.monotonic_time(:millisecond) - started, 1000)} s"
    line = Enum.join([command | args], " ")

    case status do
      0 -> out
      124 -> flunk("`#{line}` (in #{dir}) was stopped after #{took}:\n#{out}")
      _ -> flunk("`#{line}` (in #{dir}) exited with #{status} after #{took}:\n#{out}")
    end
  end
end
