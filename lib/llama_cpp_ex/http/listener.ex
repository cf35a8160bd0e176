defmodule LlamaCppEx.HTTP.Listener do
  @moduledoc false
  # The process behind LlamaCppEx.HTTP: starts the batching server(s) it was
  # given as options (linked), the metrics table, and one httpd instance
  # (under inets' supervisor, monitored) whose module is
  # LlamaCppEx.HTTP.Handler. It traps exits: if httpd or a server it started
  # stops, it stops too (its supervisor restarts it); terminate/2 stops httpd.

  use GenServer

  def start_link({opts, gen_opts}), do: GenServer.start_link(__MODULE__, opts, gen_opts)

  @impl true
  def init(opts) do
    Process.flag(:trap_exit, true)

    with {:ok, server, id1} <- server(opts[:server], false),
         {:ok, embeddings, id2} <- server(opts[:embeddings], true) do
      metrics = LlamaCppEx.HTTP.Metrics.new()

      config = %{
        server: server,
        embeddings: embeddings,
        api_key: opts[:api_key],
        model_id: opts[:model_id] || id1 || id2,
        chat_template: opts[:chat_template],
        max_headers: opts[:max_headers],
        metrics: metrics,
        created: System.os_time(:second)
      }

      case :inets.start(:httpd, httpd_config(opts, config)) do
        {:ok, httpd} ->
          Process.monitor(httpd)
          {:ok, %{httpd: httpd, config: config, ip: opts[:ip]}}

        {:error, reason} ->
          {:stop, {:httpd_failed, reason}}
      end
    end
  end

  # a running server (name or pid), or the options to start one
  defp server(nil, _embeddings?), do: {:ok, nil, nil}

  defp server(opts, embeddings?) when is_list(opts) do
    opts = Keyword.put(opts, :embeddings, embeddings?)

    case LlamaCppEx.Server.start_link(opts) do
      {:ok, pid} -> {:ok, pid, model_id(opts)}
      {:error, reason} -> {:stop, {:server_failed, reason}}
    end
  end

  defp server(server, _embeddings?), do: {:ok, server, nil}

  defp model_id(opts) do
    cond do
      opts[:model_path] -> Path.basename(opts[:model_path])
      match?(%LlamaCppEx.Model{path: p} when is_binary(p), opts[:model]) -> Path.basename(opts[:model].path)
      true -> nil
    end
  end

  defp httpd_config(opts, config) do
    ip = opts[:ip]
    root = String.to_charlist(System.tmp_dir!())

    [
      port: opts[:port],
      bind_address: ip,
      ipfamily: if(tuple_size(ip) == 8, do: :inet6, else: :inet),
      server_name: ~c"llama_cpp_ex",
      server_root: root,
      document_root: root,
      modules: [LlamaCppEx.HTTP.Handler],
      max_body_size: opts[:max_body],
      max_header_size: opts[:max_header_size],
      max_uri_size: opts[:max_uri_size],
      max_clients: opts[:max_connections],
      keep_alive: true,
      keep_alive_timeout: max(1, div(opts[:idle_timeout], 1000)),
      max_keep_alive_request: opts[:max_keep_alive_requests],
      llama_cpp_ex: config
    ] ++ if(opts[:min_bytes_per_second], do: [minimum_bytes_per_second: opts[:min_bytes_per_second]], else: [])
  end

  @impl true
  def handle_call(:port, _from, s), do: {:reply, Keyword.fetch!(:httpd.info(s.httpd), :port), s}
  def handle_call(:ip, _from, s), do: {:reply, s.ip, s}

  @impl true
  def handle_info({:EXIT, _pid, :normal}, s), do: {:noreply, s}
  def handle_info({:EXIT, pid, reason}, s), do: {:stop, {:linked_exit, pid, reason}, s}
  def handle_info({:DOWN, _, :process, pid, reason}, %{httpd: pid} = s), do: {:stop, {:httpd_down, reason}, s}
  def handle_info(_other, s), do: {:noreply, s}

  @impl true
  def terminate(_reason, s) do
    _ = :inets.stop(:httpd, s.httpd)
    :ok
  end
end
