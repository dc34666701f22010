-- GET the URL's path with each user's bearer token in turn (args: tokens file).
local prepared = {}

function prepare()
  for _, token in ipairs(lines) do
    table.insert(prepared, wrk.format("GET", nil, {["Authorization"] = token}))
  end
end

local i = 0
function request()
  i = i % #prepared + 1
  return prepared[i]
end
