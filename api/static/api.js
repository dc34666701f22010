// The public API, called the way any client calls it: same-origin fetch with
// the session cookie, JSON bodies with Content-Type: application/json.

export class Answer {
  constructor(status, body, headers) {
    this.status = status;
    this.body = body;
    this.headers = headers;
  }

  get ok() {
    return this.status >= 200 && this.status < 300;
  }

  /** The API's reason for an error ({"error": "..."}), or "". */
  get reason() {
    return this.body && typeof this.body.error === "string" ? this.body.error : "";
  }

  /** True when the list goes on (a Link header with rel="next"). */
  get more() {
    return /rel="?next"?/.test(this.headers.get("Link") || "");
  }

  /** Seconds from Retry-After, at least 1. */
  get retryAfter() {
    const seconds = Number.parseInt(this.headers.get("Retry-After") || "", 10);
    return Number.isFinite(seconds) && seconds > 0 ? seconds : 1;
  }
}

/** One request; a network failure resolves to status 0 rather than throwing. */
export async function call(method, path, jsonText) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (jsonText !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = jsonText;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    return new Answer(0, null, new Headers());
  }
  let body = null;
  const text = await response.text().catch(() => "");
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  return new Answer(response.status, body, response.headers);
}

export const api = {
  register: (login, password) =>
    call("POST", "/api/user/register", JSON.stringify({ login, password })),
  login: (login, password) =>
    call("POST", "/api/user/login", JSON.stringify({ login, password })),
  logout: () => call("POST", "/api/user/logout", "{}"),
  upload: (number) => call("POST", "/api/user/orders", JSON.stringify({ order_number: number })),
  // Lists: the newest `limit` items; Answer.more tells whether older ones follow.
  orders: (limit) => call("GET", `/api/user/orders?limit=${limit}`),
  balance: () => call("GET", "/api/user/balance"),
  withdrawals: (limit) => call("GET", `/api/user/withdrawals?limit=${limit}`),
  // The sum is exact decimal text (checks.exactSum), written into the JSON as is.
  withdraw: (order, sumText) =>
    call("POST", "/api/user/balance/withdraw", `{"order": ${JSON.stringify(order)}, "sum": ${sumText}}`),
};
