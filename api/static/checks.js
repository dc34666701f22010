// Checks the page makes as the customer types; the server stays the authority.

/** "empty", "digits" (something other than digits), "bad" (fails Luhn) or "ok". */
export function orderNumberState(text) {
  const value = text.trim();
  if (value === "") return "empty";
  if (!/^[0-9]+$/.test(value)) return "digits";
  return luhnValid(value) ? "ok" : "bad";
}

export function luhnValid(digits) {
  let sum = 0;
  let double = false;
  for (let i = digits.length - 1; i >= 0; i -= 1) {
    let d = digits.charCodeAt(i) - 48;
    if (double) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
    double = !double;
  }
  return sum % 10 === 0;
}

/**
 * The sum as the exact decimal text to send ("12.5" for "12,50"), or null.
 * Either separator is accepted, at most two decimals, more than zero; the
 * text goes into the JSON body as written, never through a float.
 */
export function exactSum(text) {
  const match = /^\s*([0-9]{1,15})(?:[.,]([0-9]{1,2}))?\s*$/.exec(text);
  if (!match) return null;
  const whole = match[1].replace(/^0+(?=[0-9])/, "");
  const cents = (match[2] || "").replace(/0+$/, "");
  if (/^0+$/.test(whole) && cents === "") return null;
  return cents ? `${whole}.${cents}` : whole;
}
