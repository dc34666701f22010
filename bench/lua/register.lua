-- POST /api/user/register with a fresh login every time (args: "", prefix).
local password = "flood-password-1"

function request()
  counter = counter + 1
  local body = '{"login": "flood-' .. prefix .. '-' .. counter .. '", "password": "'
    .. password .. '"}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
