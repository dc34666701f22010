-- POST /api/user/balance/withdraw: 0.01 points on a fresh order number each time.
function request()
  return wrk.format("POST", nil,
    {["Authorization"] = rotate(), ["Content-Type"] = "application/json"},
    '{"order": "' .. fresh_number() .. '", "sum": 0.01}')
end
