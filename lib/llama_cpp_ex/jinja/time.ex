defmodule LlamaCppEx.Jinja.Time do
  @moduledoc false
  # `strftime_now(format)`, the local time, with the directives the reference supports
  # (%Y %m %d %b %B %H %M %%, English month names); any other directive stays as written.

  @months ~w(January February March April May June July August September October November December)

  @spec strftime_now(String.t()) :: String.t()
  def strftime_now(format), do: strftime(:calendar.local_time(), format)

  @spec strftime(:calendar.datetime(), String.t()) :: String.t()
  def strftime({{y, mo, d}, {h, mi, _s}}, format) do
    Regex.replace(~r/%[YmdbBHM%]/, format, fn
      "%Y" -> Integer.to_string(y)
      "%m" -> pad2(mo)
      "%d" -> pad2(d)
      "%b" -> @months |> Enum.at(mo - 1) |> binary_part(0, 3)
      "%B" -> Enum.at(@months, mo - 1)
      "%H" -> pad2(h)
      "%M" -> pad2(mi)
      "%%" -> "%"
    end)
  end

  defp pad2(n), do: n |> Integer.to_string() |> String.pad_leading(2, "0")
end
