-- The framework's ceiling: a plain GET, no credentials.
local req

function prepare()
  req = wrk.format("GET")
end

function request()
  return req
end
