-- POST /api/user/login with each user's credentials in turn (args: "login password" lines).
local bodies = {}

function prepare()
  for _, line in ipairs(lines) do
    local login, password = line:match("^(%S+) (%S+)$")
    table.insert(bodies, '{"login": "' .. login .. '", "password": "' .. password .. '"}')
  end
end

local i = 0
function request()
  i = i % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
