-- POST /api/user/orders: a fresh Luhn-valid number each time (args: tokens file, prefix).
function request()
  return wrk.format("POST", nil,
    {["Authorization"] = rotate(), ["Content-Type"] = "text/plain"}, fresh_number())
end
