defmodule LlamaCppEx.HTTP.ChatPage do
  @moduledoc false
  # GET /: the chat page, plain HTML and JavaScript (chat_page.html, read at
  # compile time; no build step), which streams replies from
  # /v1/chat/completions.

  @external_resource Path.join(__DIR__, "chat_page.html")
  @html File.read!(Path.join(__DIR__, "chat_page.html"))

  def html, do: @html
end
