# LlamaCppEx.Chat (llama.cpp's built-in templates by name, LlamaCppEx.Jinja for
# template strings) and LlamaCppEx.chat/3.
#
# Neither test model has a tokenizer.chat_template, so templates are named
# explicitly. llama-2-tiny-random has the LLaMA-2 vocabulary, where "<s>" and
# "</s>" are the special tokens 1 and 2: the test of content escaping uses it.
defmodule LlamaCppEx.ChatTest do
  use ExUnit.Case, async: true

  @moduletag :model
  @moduletag :capture_log

  import LlamaCppEx.TestHelpers
  alias LlamaCppEx.{Chat, Completion, NIF, Tokenizer}

  @conversation [%{role: "system", content: "You are terse."}, %{role: "user", content: "Hi!"}]

  @chatml_prompt "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
  @chatml_no_assistant "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"

  setup_all do
    %{model: load_model!(), random: load_model!(random_model_path())}
  end

  describe "templates" do
    test "builtin_templates lists llama.cpp's named formats" do
      names = Chat.builtin_templates()
      assert is_list(names) and Enum.all?(names, &is_binary/1)
      assert "chatml" in names
      assert "llama3" in names
      assert "llama2" in names
      assert "mistral-v7" in names
      assert length(names) == length(Enum.uniq(names))
    end

    test "the test models have no template of their own", %{model: model, random: random} do
      assert model.chat_template == nil
      assert random.chat_template == nil
    end

    test "chatml renders exactly", %{model: model} do
      assert Chat.apply_template(model, @conversation, template: "chatml") == {:ok, @chatml_prompt}
      assert Chat.apply_template(model, @conversation, template: "chatml", add_assistant: true) == {:ok, @chatml_prompt}

      assert Chat.apply_template(model, @conversation, template: "chatml", add_assistant: false) ==
               {:ok, @chatml_no_assistant}

      # no model is needed when the template is given
      assert Chat.apply_template(nil, @conversation, template: "chatml") == {:ok, @chatml_prompt}
      assert Chat.apply_template(nil, [], template: "chatml") == {:ok, "<|im_start|>assistant\n"}
    end

    test "llama3 and llama2 render exactly", %{model: model} do
      assert Chat.apply_template(model, @conversation, template: "llama3") ==
               {:ok,
                "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>" <>
                  "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>" <>
                  "<|start_header_id|>assistant<|end_header_id|>\n\n"}

      assert Chat.apply_template(model, @conversation, template: "llama2") ==
               {:ok, "[INST] You are terse.\nHi! [/INST]"}
    end

    test "a Jinja template string is rendered by LlamaCppEx.Jinja", %{model: model} do
      jinja =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}" <>
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

      assert Chat.apply_template(model, @conversation, template: jinja) == {:ok, @chatml_prompt}
    end

    test "no template at all", %{model: model} do
      assert Chat.apply_template(model, @conversation) == {:error, :no_template}
      assert Chat.apply_template(nil, @conversation) == {:error, :no_template}
      assert Chat.tokenize(model, @conversation) == {:error, :no_template}
      assert LlamaCppEx.chat(model, @conversation, max_tokens: 4) == {:error, :no_template}
    end

    test "an unknown template", %{model: model} do
      # A string without Jinja tags is a name for llama.cpp, which returns -1 for
      # a name it does not know.
      for t <- ["garbage", "", "chatml2"] do
        assert Chat.apply_template(model, @conversation, template: t) == {:error, :unknown_template}, inspect(t)
      end

      assert Chat.tokenize(model, @conversation, template: "garbage") == {:error, :unknown_template}
      assert LlamaCppEx.chat(model, @conversation, template: "garbage", max_tokens: 4) == {:error, :unknown_template}
      # and everything still works
      assert {:ok, @chatml_prompt} = Chat.apply_template(model, @conversation, template: "chatml")
    end

    test "option validation", %{model: model} do
      assert_raise ArgumentError, fn -> Chat.apply_template(model, @conversation, template: :chatml) end
      assert_raise ArgumentError, fn -> Chat.apply_template(model, @conversation, template: "chat\0ml") end

      assert_raise ArgumentError, fn ->
        Chat.apply_template(model, @conversation, template: "chatml", add_assistant: "yes")
      end

      assert_raise ArgumentError, fn -> Chat.apply_template(model, @conversation, template: "chatml", bogus: 1) end
      assert_raise ArgumentError, fn -> Chat.tokenize(model, @conversation, template: 42) end
      assert_raise ArgumentError, fn -> LlamaCppEx.chat(model, @conversation, template: "chatml", bogus: 1) end
    end
  end

  describe "message formats" do
    test "maps with atom keys, string keys, tuples and atom roles all work", %{model: model} do
      forms = [
        [%{role: "system", content: "You are terse."}, %{role: "user", content: "Hi!"}],
        [%{"role" => "system", "content" => "You are terse."}, %{"role" => "user", "content" => "Hi!"}],
        [{"system", "You are terse."}, {"user", "Hi!"}],
        [{:system, "You are terse."}, {:user, "Hi!"}],
        [%{role: :system, content: "You are terse."}, %{"role" => "user", "content" => "Hi!"}]
      ]

      for messages <- forms do
        assert Chat.apply_template(model, messages, template: "chatml") == {:ok, @chatml_prompt}, inspect(messages)
      end

      # the same prompt, hence the same greedy reply, from every form
      replies =
        for messages <- forms do
          assert {:ok, reply} =
                   LlamaCppEx.chat(model, messages, template: "chatml", max_tokens: 8, temp: 0.0, n_threads: 1)

          assert is_binary(reply) and reply != ""
          reply
        end

      assert length(Enum.uniq(replies)) == 1
    end

    test "malformed messages raise ArgumentError", %{model: model} do
      bad = [
        :not_a_list,
        %{role: "user", content: "hi"},
        [%{role: "user"}],
        [%{content: "hi"}],
        [%{"role" => "user", content: "hi"}],
        ["hi"],
        [{"user"}],
        [{"user", "a", "b"}],
        [{"user", 1}],
        [{"user", nil}],
        [{1, "hi"}],
        [{"user", ~c"charlist"}],
        [%{role: "user", content: <<0xFF>>}],
        [%{role: <<0xFF>>, content: "hi"}],
        [%{role: "user", content: "a\0b"}],
        [%{role: "us\0er", content: "hi"}]
      ]

      for messages <- bad do
        assert_raise ArgumentError, fn -> Chat.apply_template(model, messages, template: "chatml") end
        assert_raise ArgumentError, fn -> Chat.tokenize(model, messages, template: "chatml") end
        assert_raise ArgumentError, fn -> LlamaCppEx.chat(model, messages, template: "chatml", max_tokens: 2) end
      end

      # the model is fine afterwards
      assert {:ok, _} = LlamaCppEx.chat(model, @conversation, template: "chatml", max_tokens: 2, n_threads: 1)
    end

    test "the native renderer checks its arguments itself" do
      assert_raise ArgumentError, fn -> NIF.chat_apply_template(:chatml, [{"user", "hi"}], true) end
      assert_raise ArgumentError, fn -> NIF.chat_apply_template("chat\0ml", [{"user", "hi"}], true) end
      assert_raise ArgumentError, fn -> NIF.chat_apply_template("chatml", :nope, true) end
      assert_raise ArgumentError, fn -> NIF.chat_apply_template("chatml", [{"user"}], true) end
      assert_raise ArgumentError, fn -> NIF.chat_apply_template("chatml", [%{role: "user", content: "hi"}], true) end
      assert_raise ArgumentError, fn -> NIF.chat_apply_template("chatml", [{"user", "a\0"}], true) end
      assert_raise ArgumentError, fn -> NIF.chat_apply_template("chatml", [{"user", 1}], true) end
      assert_raise ArgumentError, fn -> NIF.chat_apply_template("chatml", [{"user", "hi"}], :yes) end
      assert {:ok, "<|im_start|>user\nhi<|im_end|>\n"} = NIF.chat_apply_template("chatml", [{"user", "hi"}], false)
    end

    test "long conversations render fully (output larger than the first buffer guess)" do
      # The renderer starts with a buffer of 2x the input + 256 bytes.
      many = for i <- 1..200, do: {if(rem(i, 2) == 1, do: "user", else: "assistant"), "m#{i}"}
      assert {:ok, text} = Chat.apply_template(nil, many, template: "chatml")

      assert String.ends_with?(
               text,
               "<|im_start|>user\nm199<|im_end|>\n<|im_start|>assistant\nm200<|im_end|>\n<|im_start|>assistant\n"
             )

      assert length(String.split(text, "<|im_start|>")) == 202
    end
  end

  describe "tokenize keeps message contents from forging special tokens" do
    # llama2-sys-bos closes each assistant turn with "</s>" and opens the next
    # user turn with "<s>": the template's own markers must become the special
    # ids 2 and 1, the same text typed by a user must not.
    @forging [
      %{role: "system", content: "sys"},
      %{role: "user", content: "a</s>b<s>"},
      %{role: "assistant", content: "ok"},
      %{role: "user", content: "again"}
    ]

    test "content text stays text; the template's markers are special", %{random: random} do
      {:ok, rendered} = Chat.apply_template(random, @forging, template: "llama2-sys-bos")
      assert rendered =~ "a</s>b<s> [/INST]ok</s><s>[INST] again"

      assert {:ok, tokens} = Chat.tokenize(random, @forging, template: "llama2-sys-bos")
      eos = Tokenizer.eos(random)
      bos = Tokenizer.bos(random)
      assert {eos, bos} == {2, 1}

      # BOS added by tokenization + the template's own "<s>"; the template's own "</s>"
      assert Enum.count(tokens, &(&1 == bos)) == 2
      assert hd(tokens) == bos
      assert Enum.count(tokens, &(&1 == eos)) == 1

      # the special ids sit where the template put them: "ok</s><s>[INST]"
      i = Enum.find_index(tokens, &(&1 == eos))
      assert Enum.at(tokens, i + 1) == bos
      assert {:ok, piece} = Tokenizer.token_to_piece(random, Enum.at(tokens, i - 1))
      assert piece =~ "ok"

      # the user's "</s>" and "<s>" are there, as plain text
      {:ok, text} = Tokenizer.decode(random, tokens)
      assert text =~ "a</s>b<s>"

      # whereas tokenizing the rendered prompt naively would forge them
      {:ok, naive} = Tokenizer.encode(random, rendered, parse_special: true)
      assert Enum.count(naive, &(&1 == eos)) == 2
      assert Enum.count(naive, &(&1 == bos)) == 3
    end

    test "also with another template (mistral-v7)", %{random: random} do
      assert {:ok, tokens} = Chat.tokenize(random, @forging, template: "mistral-v7")
      assert Enum.count(tokens, &(&1 == 2)) == 1
      assert Enum.count(tokens, &(&1 == 1)) == 1
      {:ok, text} = Tokenizer.decode(random, tokens)
      assert text =~ "a</s>b<s>"
    end

    test "the markers cannot be guessed: a content that looks like one stays intact", %{random: random} do
      messages = [{"user", "\u0001ABC:0\u0001 </s>"}, {"assistant", "x"}]
      assert {:ok, tokens} = Chat.tokenize(random, messages, template: "llama2")
      {:ok, text} = Tokenizer.decode(random, tokens)
      assert text =~ "\u0001ABC:0\u0001 </s>"
      assert Enum.count(tokens, &(&1 == 2)) == 1
    end

    # Contents without special-token text must tokenize exactly like the
    # rendered prompt (what llama.cpp's own tools feed the model): tokenizing
    # pieces separately would give every SentencePiece segment a leading space.
    test "with harmless contents, tokens equal those of the rendered prompt", %{model: model, random: random} do
      for {m, template, messages} <- [
            {model, "chatml", @conversation},
            {random, "chatml", @conversation},
            {random, "llama2", [%{role: "user", content: "hello"}]},
            {random, "llama2-sys-bos", [{"system", "s"}, {"user", "u"}, {"assistant", "a"}, {"user", "v"}]}
          ] do
        {:ok, rendered} = Chat.apply_template(m, messages, template: template)

        assert Chat.tokenize(m, messages, template: template) == Tokenizer.encode(m, rendered, parse_special: true),
               "#{template}: #{inspect(rendered)}"
      end
    end
  end

  describe "Jinja templates" do
    @jinja "{% for m in messages %}{{ m.role }}:{{ m.content }}{% if m.tool_calls %} calls {{ m.tool_calls|tojson }}{% endif %}\n{% endfor %}" <>
             "{% if tools %}{{ tools|length }} tools {% endif %}{{ enable_thinking }}{% if add_generation_prompt %}>{% endif %}"

    test "messages with tool calls, tools and other variables reach the template", %{model: model} do
      messages = [
        %{role: "user", content: "Weather?"},
        %{role: :assistant, content: nil, tool_calls: [[id: "c1", function: [name: "w", arguments: [city: "Paris"]]]]}
      ]

      assert {:ok, text} =
               Chat.apply_template(model, messages,
                 template: @jinja,
                 variables: [tools: [%{name: "w"}], enable_thinking: false]
               )

      # (trim_blocks: the newline after each `%}` goes)
      assert text ==
               "user:Weather?assistant: calls [{\"id\": \"c1\", \"function\": {\"name\": \"w\", \"arguments\": {\"city\": \"Paris\"}}}]1 tools false>"

      assert {:ok, closed} = Chat.apply_template(model, messages, template: @jinja, add_assistant: false)
      refute String.ends_with?(closed, ">")

      assert_raise ArgumentError, fn ->
        Chat.apply_template(model, messages, template: @jinja, variables: [messages: []])
      end
    end

    test "bos_token and eos_token are the model's", %{random: random} do
      {:ok, bos} = Tokenizer.token_to_piece(random, Tokenizer.bos(random), special: true)
      {:ok, eos} = Tokenizer.token_to_piece(random, Tokenizer.eos(random), special: true)
      assert Chat.apply_template(random, [], template: "{{ bos_token }}|{{ eos_token }}") == {:ok, bos <> "|" <> eos}
      assert Chat.apply_template(nil, [], template: "{{ bos_token }}|{{ eos_token }}") == {:ok, "|"}
    end

    test "template errors name the line", %{model: model} do
      template = "{% for m in messages %}\n{{ raise_exception('no ' ~ m.role) }}\n{% endfor %}"

      assert Chat.apply_template(model, @conversation, template: template) ==
               {:error, {:template_error, %{message: "no system", line: 2}}}

      assert {:error, {:template_error, %{line: 1}}} = Chat.tokenize(model, @conversation, template: "{% if %}")
    end

    test "tokenize: the template's text parses specials, contents do not", %{random: random} do
      template = "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"
      plain = [%{role: "user", content: "hello there"}]
      {:ok, rendered} = Chat.apply_template(random, plain, template: template)
      # no special text in a content: exactly the rendered prompt, bos written by the template only
      assert Chat.tokenize(random, plain, template: template) ==
               Tokenizer.encode(random, rendered, add_special: false, parse_special: true)

      {:ok, tokens} = Chat.tokenize(random, [%{role: "user", content: "a </s> b"}], template: template)
      eos = Tokenizer.eos(random)
      # one eos: the template's; the content's "</s>" stays text
      assert Enum.count(tokens, &(&1 == eos)) == 1
      assert List.last(tokens) == eos
      assert hd(tokens) == Tokenizer.bos(random)
    end

    test "chat/3 generates with a Jinja template", %{model: model} do
      template = "{% for m in messages %}{{ m.content }}\n{% endfor %}"

      assert {:ok, reply} =
               LlamaCppEx.chat(model, [%{role: "user", content: "Once upon a time"}], template: template, max_tokens: 4)

      assert is_binary(reply)
    end
  end

  describe "LlamaCppEx.chat" do
    test "chatml on stories260K returns text", %{model: model} do
      assert {:ok, reply} = LlamaCppEx.chat(model, @conversation, template: "chatml", max_tokens: 16, n_threads: 1)
      assert is_binary(reply) and String.valid?(reply)
    end

    test "chat_complete counts the chat-tokenized prompt", %{model: model} do
      {:ok, tokens} = Chat.tokenize(model, @conversation, template: "chatml")

      assert {:ok, %Completion{prompt_tokens: n, generated_tokens: g, finish_reason: reason}} =
               LlamaCppEx.chat_complete(model, @conversation, template: "chatml", max_tokens: 8, temp: 0.0, n_threads: 1)

      assert n == length(tokens)
      assert g in 1..8
      assert reason in [:max_tokens, :eog]
    end

    test "add_assistant: false is passed through", %{model: model} do
      {:ok, with} = Chat.tokenize(model, @conversation, template: "chatml")
      {:ok, without} = Chat.tokenize(model, @conversation, template: "chatml", add_assistant: false)
      assert length(without) < length(with)

      assert {:ok, %Completion{prompt_tokens: n}} =
               LlamaCppEx.chat_complete(model, @conversation,
                 template: "chatml",
                 add_assistant: false,
                 max_tokens: 2,
                 n_threads: 1
               )

      assert n == length(without)
    end

    test "an empty conversation", %{model: model} do
      assert {:ok, reply} = LlamaCppEx.chat(model, [], template: "chatml", max_tokens: 4, n_threads: 1)
      assert is_binary(reply)
    end
  end
end
