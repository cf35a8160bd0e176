defmodule LlamaCppEx.Server.Loop do
  @moduledoc false
  # The process behind LlamaCppEx.Server: it owns the model's one context and
  # its batch engine (LlamaCppEx.Server.Batch), keeps the requests (caller
  # monitors, the wait queue, timers, stream flow control, the prefix cache
  # index) and runs the step loop.
  #
  # Stepping: while some slot has work, the process sends itself :step after
  # each step, so every message that arrived meanwhile (new requests,
  # demands, cancels, caller deaths) is handled between two steps, and the
  # next step starts at once after them: no timer, no batching delay. Each
  # step is one dirty NIF call (c_src/batch.c): one decode for every slot.

  use GenServer
  require Logger

  alias LlamaCppEx.{Completion, Context, Model, Sampler}
  alias LlamaCppEx.Server.{Batch, Cache, Queue, Request, SavedSession}

  # a stream runs at most this many tokens past its last chunk before it waits
  # for its consumer (as LlamaCppEx.Context.stream/4)
  @window LlamaCppEx.Context.stream_window()

  def start_link(opts) do
    {name, opts} = Keyword.pop(opts, :name)
    GenServer.start_link(__MODULE__, opts, if(name, do: [name: name], else: []))
  end

  # ---- start ----------------------------------------------------------------------------

  @impl true
  def init(opts), do: {:ok, %{status: :loading}, {:continue, {:setup, opts}}}

  # Loading runs here, after init/1 has returned, so a supervisor starting the
  # server is not held up by it. Calls made meanwhile wait in the mailbox and
  # are served when it is done; if it fails, the server stops with the reason
  # and those callers get it as {:error, {:server_down, reason}}.
  @impl true
  def handle_continue({:setup, opts}, _state) do
    case setup(opts) do
      {:ok, state} -> {:noreply, state}
      {:error, reason} -> {:stop, reason, %{status: :failed}}
    end
  end

  # Steps decode chunks of many sequences in one batch, which llama.cpp
  # splits into micro-batches only with a KV cache and causal attention
  # (encoder-only models such as BERT have neither).
  defp stepwise(%Context{stepwise_embeddings: false} = ctx, embeddings?) do
    Context.free(ctx)
    {:error, if(embeddings?, do: :embeddings_need_causal_model, else: :generation_needs_causal_model)}
  end

  defp stepwise(_ctx, _embeddings), do: :ok

  # One decode before the first request, as llama-server does at start: the
  # first llama_decode of a context pays for its weights (page faults of the
  # mapped file, repacking for the CPU's kernels, buffers), 100 ms on
  # stories260K, which would otherwise be the first caller's time to first token.
  defp warm_up(_ctx, _model, true), do: :ok

  defp warm_up(ctx, model, _embeddings) do
    bos = LlamaCppEx.Tokenizer.bos(model) || 0

    with :ok <- Context.decode(ctx, [bos]) do
      Context.clear(ctx)
    end
  end

  defp setup(opts) do
    with {:ok, model, own?} <- model(opts),
         opts = Keyword.put(opts, :n_ctx, opts[:n_ctx] || default_n_ctx(model)),
         # a step never holds more tokens than the cache has cells
         opts = Keyword.put(opts, :n_batch, min(opts[:n_batch], total_cells(opts))),
         {:ok, ctx} <- Context.create(model, context_options(opts)),
         # texts are absorbed in chunks across steps: only with a KV cache and
         # causal attention do token embeddings not depend on how a sequence is split
         :ok <- stepwise(ctx, opts[:embeddings]),
         :ok <- warm_up(ctx, model, opts[:embeddings]),
         {:ok, engine} <-
           Batch.new(ctx,
             n_slots: opts[:n_parallel],
             n_batch: opts[:n_batch],
             n_ctx_slot: opts[:n_ctx],
             embedding: opts[:embeddings]
           ),
         {:ok, info} <- Batch.info(engine) do
      n = opts[:n_parallel]

      {:ok,
       %{
         status: :ready,
         model: model,
         own_model?: own?,
         ctx: ctx,
         engine: engine,
         embedding: opts[:embeddings],
         n_slots: n,
         n_ctx_slot: opts[:n_ctx],
         n_batch: opts[:n_batch],
         kv_cells: info.n_ctx,
         unified: info.unified,
         max_queue: opts[:max_queue],
         free: Enum.to_list(0..(n - 1)),
         slots: %{},
         requests: %{},
         queue: Queue.new(opts[:starvation_limit]),
         cache: Cache.new(n, unified: info.unified, enabled: opts[:prefix_cache] and not opts[:embeddings]),
         stepping: false,
         last_step: nil,
         cycle: nil,
         order: 0,
         stats: new_stats()
       }}
    end
  end

  defp model(opts) do
    case opts[:model] do
      %Model{} = model ->
        {:ok, model, false}

      nil ->
        with {:ok, model} <- Model.load(opts[:model_path], opts[:model_options]), do: {:ok, model, true}
    end
  end

  defp default_n_ctx(%Model{n_ctx_train: n}) when n > 0, do: min(n, 2048)
  defp default_n_ctx(_model), do: 2048

  # n_ctx is per slot: a unified cache holds kv_cells for all slots together
  # (default n_ctx * n_parallel); otherwise each slot gets a part of n_ctx.
  defp total_cells(opts) do
    if opts[:kv_unified],
      do: opts[:kv_cells] || opts[:n_ctx] * opts[:n_parallel],
      else: opts[:n_ctx] * opts[:n_parallel]
  end

  defp context_options(opts) do
    n = opts[:n_parallel]

    [
      n_ctx: total_cells(opts),
      n_batch: opts[:n_batch],
      n_ubatch: min(opts[:n_ubatch], opts[:n_batch]),
      n_seq_max: n,
      kv_unified: opts[:kv_unified],
      n_threads: opts[:n_threads],
      n_threads_batch: opts[:n_threads_batch] || opts[:n_threads],
      flash_attn: opts[:flash_attn],
      type_k: opts[:type_k],
      type_v: opts[:type_v],
      embeddings: opts[:embeddings],
      pooling: if(opts[:embeddings], do: :none, else: :unspecified)
    ]
  end

  @impl true
  def terminate(_reason, %{status: :ready} = s) do
    # callers monitor the server and get {:error, {:server_down, reason}}
    if s.own_model?, do: Model.free(s.model)
    :ok
  end

  def terminate(_reason, _state), do: :ok

  # ---- calls ------------------------------------------------------------------------------

  @impl true
  def handle_call(:config, _from, s) do
    {:reply, {:ok, %{model: s.model, n_ctx_slot: s.n_ctx_slot, embedding: s.embedding}}, s}
  end

  def handle_call({:submit, reqs}, _from, s) do
    cond do
      Enum.any?(reqs, &Map.has_key?(s.requests, &1.ref)) ->
        {:reply, {:error, :duplicate_ref}, s}

      Queue.size(s.queue) + max(0, length(reqs) - length(s.free)) > s.max_queue ->
        {:reply, {:error, :overloaded}, bump(s, :rejected, length(reqs))}

      true ->
        s = Enum.reduce(reqs, s, &enqueue(&2, &1))
        {:reply, :ok, s |> admit_waiting() |> schedule_step()}
    end
  end

  def handle_call({:cancel, ref}, _from, s) do
    case Map.fetch(s.requests, ref) do
      {:ok, req} -> {:reply, :ok, s |> stop_request(req, :cancelled) |> admit_waiting() |> schedule_step()}
      :error -> {:reply, {:error, :not_found}, s}
    end
  end

  def handle_call(:stats, _from, s), do: {:reply, stats(s), s}

  def handle_call({:save_session, _session, _scope}, _from, %{embedding: true} = s),
    do: {:reply, {:error, :embeddings_only}, s}

  def handle_call({:save_session, session, scope}, _from, s) do
    with {:ok, slot} <- session_slot(s.cache, session, scope),
         key = s.cache.seqs[slot].tokens,
         {:ok, state, n_past} <- Batch.seq_save(s.engine, slot),
         :ok <- same_length(n_past, key) do
      saved = SavedSession.new(session, scope, Cache.tokens(key), state)
      {:reply, {:ok, saved}, bump(s, :sessions_saved)}
    else
      error -> {:reply, error, s}
    end
  end

  def handle_call({:restore_session, _saved}, _from, %{embedding: true} = s),
    do: {:reply, {:error, :embeddings_only}, s}

  def handle_call({:restore_session, _saved}, _from, %{free: []} = s), do: {:reply, {:error, :busy}, s}

  def handle_call({:restore_session, %SavedSession{} = saved}, _from, s) do
    case check_saved(saved, s) do
      :ok ->
        key = Cache.key(saved.tokens)
        {slot, _src, _reuse} = Cache.choose(s.cache, s.free, key, saved.scope, saved.session)

        case Batch.seq_load(s.engine, slot, saved.state, length(saved.tokens)) do
          :ok ->
            cache = Cache.restore(s.cache, slot, key, saved.scope, saved.session)
            {:reply, :ok, bump(%{s | cache: cache}, :sessions_restored)}

          # the slot's sequence is empty now
          error ->
            {:reply, error, %{s | cache: Cache.drop(s.cache, slot)}}
        end

      error ->
        {:reply, error, s}
    end
  end

  def handle_call(:info, _from, s) do
    {:ok, info} = Batch.info(s.engine)
    {:reply, Map.merge(info, %{cache: Cache.held(s.cache), free: s.free}), s}
  end

  # ---- saved sessions -------------------------------------------------------------------------

  defp session_slot(cache, session, scope) do
    case Cache.session(cache, session, scope) do
      {:ok, slot} -> {:ok, slot}
      :busy -> {:error, :busy}
      :error -> {:error, :not_found}
    end
  end

  # the cache index says what the sequence holds; a sequence that disagrees is not saved
  defp same_length(n_past, key) when n_past * 4 == byte_size(key), do: :ok

  defp same_length(n_past, key),
    do: {:error, {:invalid_state, "the slot holds #{n_past} positions, its cache entry #{div(byte_size(key), 4)}"}}

  # what the blob's own native checks cannot see: its parts belong together and the tokens fit
  defp check_saved(saved, s) do
    n_vocab = Model.n_vocab(s.model)
    n = length(saved.tokens)

    cond do
      not SavedSession.intact?(saved) ->
        {:error, {:invalid_state, "the checksum does not match the saved session's parts"}}

      not Enum.all?(saved.tokens, &(is_integer(&1) and &1 >= 0 and &1 < n_vocab)) ->
        {:error, {:invalid_state, "token ids outside the vocabulary (#{n_vocab})"}}

      n == 0 or n > s.n_ctx_slot ->
        {:error, {:invalid_state, "#{n} tokens, a slot holds 1..#{s.n_ctx_slot}"}}

      true ->
        :ok
    end
  end

  # ---- messages ---------------------------------------------------------------------------

  @impl true
  # The time of the whole step counts as its cost: the NIF call and the
  # decode, what the events cause (messages to callers, the cache index) and
  # the admissions that follow.
  # A step's cycle runs from its start to the start of the step that follows
  # it at once: it adds what happens between two steps (the scheduler hops
  # from the dirty NIF back to this process and out again, other messages).
  def handle_info(:step, s) do
    t0 = now_us()
    s = s |> close_cycle(t0) |> Map.merge(%{stepping: false, last_step: nil}) |> run_step() |> admit_waiting()
    s = if s.last_step, do: record_step(s, s.last_step, now_us() - t0), else: s
    s = schedule_step(s)
    # only a step that schedules the next one at once opens a cycle
    {:noreply, %{s | cycle: if(s.last_step && s.stepping, do: {t0, s.last_step}, else: nil)}}
  end

  # a stream's consumer asks for the next chunk
  def handle_info({:demand, ref}, s) do
    case Map.fetch(s.requests, ref) do
      {:ok, req} ->
        req = send_chunk(%{req | demanded: req.demanded + 1})
        {:noreply, s |> put_request(req) |> schedule_step()}

      :error ->
        {:noreply, s}
    end
  end

  # a stream was halted
  def handle_info({:cancel, ref}, s) do
    case Map.fetch(s.requests, ref) do
      {:ok, req} -> {:noreply, s |> stop_request(req, :cancelled) |> admit_waiting() |> schedule_step()}
      :error -> {:noreply, s}
    end
  end

  def handle_info({:timeout, ref}, s) do
    case Map.fetch(s.requests, ref) do
      {:ok, req} -> {:noreply, s |> stop_request(%{req | timer: nil}, :timeout) |> admit_waiting() |> schedule_step()}
      :error -> {:noreply, s}
    end
  end

  # a caller died: its request ends without a reply
  def handle_info({:DOWN, mon, :process, _pid, _reason}, s) do
    case Enum.find(Map.values(s.requests), &(&1.mon == mon)) do
      nil -> {:noreply, s}
      req -> {:noreply, s |> stop_request(%{req | mon: nil}, :caller_down) |> admit_waiting() |> schedule_step()}
    end
  end

  def handle_info(_other, s), do: {:noreply, s}

  # ---- queue and admission --------------------------------------------------------------------

  defp enqueue(s, %Request{} = req) do
    mon = Process.monitor(req.pid)
    timer = if req.timeout == :infinity, do: nil, else: Process.send_after(self(), {:timeout, req.ref}, req.timeout)
    req = %{req | mon: mon, timer: timer, submitted_at: now_us()}
    %{s | queue: Queue.push(s.queue, req.priority, req.ref)} |> put_request(req)
  end

  defp admit_waiting(%{free: []} = s), do: s

  defp admit_waiting(s) do
    case Queue.pop(s.queue) do
      :empty -> s
      {{_class, ref}, queue} -> %{s | queue: queue} |> admit(s.requests[ref]) |> admit_waiting()
    end
  end

  defp admit(s, %Request{kind: :embed} = req) do
    [slot | free] = s.free

    case admit_native(fn -> Batch.admit_embed(s.engine, slot, req.tokens, req.pooling) end) do
      :ok -> occupy(%{s | free: free, cache: Cache.drop(s.cache, slot)}, req, slot)
      {:error, reason} -> s |> reply(req, {:error, reason}) |> end_request(req) |> bump(:failed)
    end
  end

  defp admit(s, %Request{} = req) do
    {slot, src, reuse} = Cache.choose(s.cache, s.free, req.key, req.scope, req.session)

    opts = %{
      max_tokens: req.max_tokens,
      stop: req.stop,
      logprobs: req.logprobs,
      context_shift: req.context_shift,
      n_keep: req.n_keep,
      special: req.special,
      stream: req.kind == :stream,
      src: src,
      reuse: reuse,
      lora: req.lora
    }

    case admit_native(fn -> Batch.admit(s.engine, slot, req.sampler, req.tokens, opts) end) do
      {:ok, reused} ->
        cache = Cache.admit(s.cache, slot, req.key, req.scope, req.session, src, reused)
        s = %{s | free: List.delete(s.free, slot), cache: cache}
        s = if reused > 0, do: bump(s, :cache_hits), else: s
        occupy(s, req, slot)

      {:error, reason} ->
        # the slot's cells may have changed before the failure: forget them
        %{s | cache: Cache.drop(s.cache, slot)} |> reply(req, {:error, reason}) |> end_request(req) |> bump(:failed)
    end
  end

  # Requests are checked in the caller's process before they get here; should
  # one still carry something the native side refuses (it raises), that
  # request fails alone instead of taking the server and every caller down.
  defp admit_native(fun) do
    fun.()
  rescue
    e in ArgumentError -> {:error, {:invalid_request, Exception.message(e)}}
  end

  defp occupy(s, req, slot) do
    req = %{req | slot: slot, order: s.order, admitted_at: now_us()}
    %{s | slots: Map.put(s.slots, slot, req.ref), order: s.order + 1} |> put_request(req)
  end

  # ---- the step loop ----------------------------------------------------------------------------

  defp schedule_step(%{stepping: true} = s), do: s

  defp schedule_step(s) do
    if runnable?(s) do
      send(self(), :step)
      %{s | stepping: true}
    else
      s
    end
  end

  defp runnable?(s), do: Enum.any?(s.slots, fn {_slot, ref} -> not paused?(s.requests[ref]) end)

  # a stream that ran @window tokens past its last chunk waits for its consumer
  defp paused?(%Request{kind: :stream} = req), do: req.unsent >= @window and req.demanded <= req.sent
  defp paused?(_req), do: false

  defp run_step(s, retries \\ 0) do
    skip = for {slot, ref} <- s.slots, paused?(s.requests[ref]), do: slot

    if map_size(s.slots) == length(skip) do
      s
    else
      case Batch.step(s.engine, skip) do
        {:ok, events, step} ->
          %{handle_events(s, Enum.reverse(events)) | last_step: step}

        {:no_kv_slot, events} ->
          s = handle_events(s, Enum.reverse(events))

          case make_room(s) do
            {:ok, s} when retries < 4 * s.n_slots + 4 -> run_step(s, retries + 1)
            {_, s} -> s
          end
      end
    end
  end

  defp handle_events(s, events) do
    Enum.reduce(events, s, fn
      {:text, slot, text}, s ->
        req = s.requests[s.slots[slot]]
        put_request(s, send_chunk(%{pend(req, text) | unsent: req.unsent + 1}))

      {:done, slot, {:ok, result}}, s ->
        finish(s, s.requests[s.slots[slot]], result)

      {:error, slot, {:error, reason}}, s ->
        req = s.requests[s.slots[slot]]
        %{s | cache: Cache.drop(s.cache, slot)} |> reply(req, {:error, reason}) |> end_request(req) |> bump(:failed)
    end)
  end

  # KV pressure: the decode found no free cells. Purge the least recently used
  # idle cache entry; with none left, the newest request gives up its cells
  # (:context_full).
  defp make_room(s) do
    case Cache.evict(s.cache) do
      nil when map_size(s.slots) == 0 ->
        {:stuck, s}

      nil ->
        ref = s.slots |> Map.values() |> Enum.max_by(&s.requests[&1].order)
        {:ok, stop_request(s, s.requests[ref], :context_full)}

      slot ->
        :ok = Batch.purge(s.engine, slot, 0)
        {:ok, %{s | cache: Cache.drop(s.cache, slot)} |> bump(:evictions)}
    end
  end

  # ---- ending requests ------------------------------------------------------------------------------

  defp finish(s, %Request{kind: :embed} = req, vector) do
    vector = if req.normalize, do: LlamaCppEx.Embedding.normalize(vector), else: vector
    s |> reply(req, {:ok, vector}) |> end_request(req) |> bump(:completed)
  end

  defp finish(s, %Request{} = req, map) do
    if req.kind == :stream do
      req = pend(req, map.rest)
      if pending?(req), do: send(req.pid, {req.ref, chunk(req)})
    end

    s
    |> keep_cells(req, map)
    |> count_tokens(map)
    |> reply(req, {:ok, completion(req, map)})
    |> end_request(req)
    |> bump(:completed)
  end

  # Ends a request before its job finished: a cancel, a timeout, a dead
  # caller, or KV pressure.
  defp stop_request(s, %Request{slot: nil} = req, why) do
    {_, queue} = Queue.take(s.queue, &(&1 == req.ref))
    s = %{s | queue: queue}

    case why do
      :caller_down -> s
      :cancelled -> reply(s, req, {:ok, %Completion{finish_reason: :cancelled, cached_tokens: 0}})
      other -> reply(s, req, {:error, other})
    end
    |> end_request(req)
    |> bump(why)
  end

  defp stop_request(s, %Request{} = req, why) do
    # under KV pressure the cells go too
    keep? = why != :context_full
    # {:error, :out_of_memory} from the slot's last text: end it like one without a result
    map =
      case Batch.release(s.engine, req.slot, keep?) do
        {:ok, map} -> map
        {:error, _} -> nil
      end

    s = if map, do: count_tokens(s, map), else: s
    s = if map && keep?, do: keep_cells(s, req, map), else: %{s | cache: Cache.drop(s.cache, req.slot)}

    result =
      cond do
        why == :caller_down ->
          nil

        why == :cancelled and map != nil ->
          {:ok, completion(req, map)}

        why == :cancelled ->
          {:ok, %Completion{finish_reason: :cancelled}}

        why == :context_full and map != nil and map.generated_tokens > 0 ->
          {:ok, completion(req, %{map | finish_reason: :context_full})}

        true ->
          {:error, why}
      end

    s = if result, do: reply(s, req, result), else: s
    s |> end_request(req) |> bump(why)
  end

  # what the slot's sequence holds now: the prompt, then the generated tokens that were decoded
  defp keep_cells(s, req, map) do
    # after a context shift the cells no longer hold the tokens' plain prefix
    if req.kind == :embed or map.kv_tokens == 0 or map.discarded_tokens > 0 do
      %{s | cache: Cache.drop(s.cache, req.slot)}
    else
      held = req.key <> Cache.key(map.tokens)
      content = binary_part(held, 0, min(byte_size(held), map.kv_tokens * 4))
      %{s | cache: Cache.finish(s.cache, req.slot, content)}
    end
  end

  defp reply(s, %Request{pid: pid, ref: ref}, result) do
    send(pid, {ref, {:done, result}})
    s
  end

  defp end_request(s, %Request{} = req) do
    if req.mon, do: Process.demonitor(req.mon, [:flush])
    if req.timer, do: Process.cancel_timer(req.timer)
    if req.sampler, do: Sampler.free(req.sampler)
    s = %{s | requests: Map.delete(s.requests, req.ref)}

    if req.slot != nil and s.slots[req.slot] == req.ref,
      do: %{s | slots: Map.delete(s.slots, req.slot), free: Enum.sort([req.slot | s.free])},
      else: s
  end

  defp completion(req, map) do
    queue_ms = (req.admitted_at - req.submitted_at) / 1000

    %Completion{
      text: map.text,
      tokens: map.tokens,
      finish_reason: map.finish_reason,
      prompt_tokens: map.prompt_tokens,
      generated_tokens: map.generated_tokens,
      prompt_ms: map.prompt_ms,
      generation_ms: map.generation_ms,
      sample_ms: map.sample_ms,
      logprobs: LlamaCppEx.Logprob.from_native(map.logprobs),
      discarded_tokens: map.discarded_tokens,
      cached_tokens: map.cached_tokens,
      queue_ms: queue_ms,
      ttft_ms: queue_ms + map.prompt_ms
    }
  end

  # ---- streams --------------------------------------------------------------------------------------

  # Text (with logprobs: {text, logprobs}) from the engine, not sent yet.
  defp pend(req, {text, lps}), do: %{req | pending: req.pending <> text, pending_lp: Enum.reverse(lps, req.pending_lp)}
  defp pend(req, text), do: %{req | pending: req.pending <> text}

  defp pending?(req), do: req.pending != "" or req.pending_lp != []

  defp chunk(%Request{logprobs: -1} = req), do: {:chunk, req.pending}

  # (the consumer, LlamaCppEx.ChunkStream, makes the logprobs structs)
  defp chunk(req), do: {:chunk, req.pending, Enum.reverse(req.pending_lp)}

  # Sends what is not sent yet when the consumer asked for a chunk.
  defp send_chunk(%Request{kind: :stream} = req) do
    if req.demanded > req.sent and pending?(req) do
      send(req.pid, {req.ref, chunk(req)})
      %{req | sent: req.sent + 1, pending: "", pending_lp: [], unsent: 0}
    else
      req
    end
  end

  defp send_chunk(req), do: req

  defp put_request(s, req), do: %{s | requests: Map.put(s.requests, req.ref, req)}

  # ---- stats ---------------------------------------------------------------------------------------

  defp new_stats do
    %{
      started: now_us(),
      completed: 0,
      failed: 0,
      cancelled: 0,
      timeout: 0,
      caller_down: 0,
      context_full: 0,
      rejected: 0,
      evictions: 0,
      cache_hits: 0,
      sessions_saved: 0,
      sessions_restored: 0,
      prompt_tokens: 0,
      cached_tokens: 0,
      generated_tokens: 0,
      steps: 0,
      busy_us: 0,
      decode_us: 0,
      by_batch: %{},
      cycles: %{}
    }
  end

  defp bump(s, key, n \\ 1), do: %{s | stats: Map.update!(s.stats, key, &(&1 + n))}

  defp count_tokens(s, map) do
    st = s.stats

    st = %{
      st
      | prompt_tokens: st.prompt_tokens + map.prompt_tokens - map.cached_tokens,
        cached_tokens: st.cached_tokens + map.cached_tokens,
        generated_tokens: st.generated_tokens + map.generated_tokens
    }

    %{s | stats: st}
  end

  defp close_cycle(%{cycle: {t_prev, step}} = s, t0) do
    st = s.stats

    cycles =
      Map.update(st.cycles, step.generating, {1, t0 - t_prev, step.decode_us}, fn {n, c, d} ->
        {n + 1, c + t0 - t_prev, d + step.decode_us}
      end)

    %{s | stats: %{st | cycles: cycles}, cycle: nil}
  end

  defp close_cycle(s, _t0), do: s

  defp record_step(s, step, wall_us) do
    st = s.stats

    by_batch =
      Map.update(st.by_batch, step.generating, {1, wall_us, step.decode_us, step.step_us}, fn {n, w, d, c} ->
        {n + 1, w + wall_us, d + step.decode_us, c + step.step_us}
      end)

    %{
      s
      | stats: %{
          st
          | steps: st.steps + 1,
            busy_us: st.busy_us + wall_us,
            decode_us: st.decode_us + step.decode_us,
            by_batch: by_batch
        }
    }
  end

  defp stats(%{status: :ready} = s) do
    st = s.stats
    busy_s = st.busy_us / 1_000_000
    rate = fn n -> if busy_s > 0, do: n / busy_s, else: 0.0 end
    lookups = st.prompt_tokens + st.cached_tokens

    %{
      slots: %{busy: map_size(s.slots), total: s.n_slots},
      queue: Map.merge(%{depth: Queue.size(s.queue), max: s.max_queue}, Queue.sizes(s.queue)),
      requests: Map.take(st, [:completed, :failed, :cancelled, :timeout, :caller_down, :context_full, :rejected]),
      prompt_tokens: st.prompt_tokens,
      cached_tokens: st.cached_tokens,
      generated_tokens: st.generated_tokens,
      prompt_tokens_per_second: rate.(st.prompt_tokens),
      generated_tokens_per_second: rate.(st.generated_tokens),
      prefix_cache: %{
        hit_ratio: if(lookups > 0, do: st.cached_tokens / lookups, else: 0.0),
        hits: st.cache_hits,
        evictions: st.evictions,
        held: Cache.held(s.cache),
        sessions_saved: st.sessions_saved,
        sessions_restored: st.sessions_restored
      },
      kv_cells: %{used: Cache.cells(s.cache), total: s.kv_cells, unified: s.unified},
      steps: %{
        count: st.steps,
        busy_ms: st.busy_us / 1000,
        decode_ms: st.decode_us / 1000,
        outside_decode: outside_decode(st),
        by_batch:
          Map.new(st.by_batch, fn {b, {n, w, d, native}} ->
            {c_n, c_us, c_d} = Map.get(st.cycles, b, {0, 0, 0})

            {b,
             %{
               steps: n,
               step_ms: w / n / 1000,
               native_ms: native / n / 1000,
               decode_ms: d / n / 1000,
               cycle_ms: if(c_n > 0, do: c_us / c_n / 1000, else: nil),
               outside_decode: if(c_us > 0, do: 1 - c_d / c_us, else: if(w > 0, do: 1 - d / w, else: 0.0))
             }}
          end)
      }
    }
  end

  # over the cycles (see handle_info(:step, _)) when there were any
  defp outside_decode(st) do
    {c_us, c_d} = Enum.reduce(st.cycles, {0, 0}, fn {_b, {_n, c, d}}, {ca, da} -> {ca + c, da + d} end)

    cond do
      c_us > 0 -> 1 - c_d / c_us
      st.busy_us > 0 -> 1 - st.decode_us / st.busy_us
      true -> 0.0
    end
  end

  defp now_us, do: System.monotonic_time(:microsecond)
end
