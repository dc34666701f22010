// The customer page: log in, add purchases, watch them credited live, pay with points.

import { api } from "./api.js";
import { exactSum, orderNumberState } from "./checks.js";
import {
  formatPoints, formatTime, initialLanguage, language, setLanguage, t, translatePage,
} from "./i18n.js";

const POLL_MS = 5000; // without a live stream, look again this often
const SAFETY_MS = 60000; // with one, look again this often all the same
const STREAM_RETRY_MS = 60000; // after the stream was refused, try it again this late
const LOGIN_KEY = "gophermart.login";
const LIST_STEP = 50; // list items shown at first, and added by each "show more"

const $ = (id) => document.getElementById(id);

const state = {
  signedIn: false,
  orders: [],
  withdrawals: [],
  limit: { orders: LIST_STEP, history: LIST_STEP }, // items each list asks for
  more: { orders: false, history: false }, // whether the API has more than that
  balance: null,
  statuses: null, // order number -> status at the last look, to tell what changed
  stream: null,
  pollTimer: 0,
  streamTimer: 0,
  safetyTimer: 0,
  live: false,
};

// --- messages that follow the language switch -------------------------------

const shown = new Map(); // element -> [key, params] (key null: the API's own words)

function say(el, key, params = {}, kind = "") {
  shown.set(el, [key, params]);
  el.textContent = key ? t(key, params) : params.text;
  el.classList.toggle("ok", kind === "ok");
}

function sayRaw(el, text) {
  say(el, null, { text });
}

function quiet(el) {
  shown.delete(el);
  el.textContent = "";
  el.classList.remove("ok");
}

function retranslate() {
  translatePage();
  for (const [el, [key, params]] of shown) el.textContent = key ? t(key, params) : params.text;
  const other = language() === "ru" ? "en" : "ru";
  const button = $("lang");
  button.textContent = other === "ru" ? "Русский" : "English";
  button.lang = other;
  renderAll();
}

/** An error under a field: announced with the field, and focus moves there. */
function fieldError(input, errEl, key, params) {
  say(errEl, key, params);
  input.setAttribute("aria-invalid", "true");
  input.focus();
}

function fieldRawError(input, errEl, text) {
  sayRaw(errEl, text);
  input.setAttribute("aria-invalid", "true");
  input.focus();
}

function clearField(input, errEl) {
  quiet(errEl);
  input.removeAttribute("aria-invalid");
}

function announce(key, params) {
  say($("announce"), key, params);
}

/** Words for answers every form treats alike; null when the caller must decide. */
function commonError(answer) {
  if (answer.status === 0) return ["error.network", {}];
  if (answer.status === 503) return ["error.unavailable", {}];
  if (answer.status >= 500 || answer.status === 413 || answer.status === 429) {
    return ["error.other", { reason: answer.reason || String(answer.status) }];
  }
  return null;
}

const points = (value) => () => formatPoints(value);

// --- signing in and out -------------------------------------------------------

function showAuth(messageKey) {
  state.signedIn = false;
  stopLive();
  state.orders = [];
  state.withdrawals = [];
  state.limit = { orders: LIST_STEP, history: LIST_STEP };
  state.balance = null;
  state.statuses = null;
  $("loading").hidden = true;
  $("account").hidden = true;
  $("logout").hidden = true;
  $("who").hidden = true;
  $("auth").hidden = false;
  if (messageKey) announce(messageKey);
}

async function enterAccount(focus) {
  state.signedIn = true;
  $("loading").hidden = true;
  $("auth").hidden = true;
  $("account").hidden = false;
  $("logout").hidden = false;
  const login = storage()?.getItem(LOGIN_KEY);
  if (login) say($("who"), "who", { login });
  $("who").hidden = !login;
  if (focus) $("balance-h").focus();
  startLive();
  await refresh();
}

function sessionEnded() {
  if (!state.signedIn) return;
  showAuth("auth.expired");
  say($("auth-err"), "auth.expired");
  $("login").focus();
}

async function onAuthSubmit(event) {
  event.preventDefault();
  const register = event.submitter?.value === "register";
  const loginInput = $("login");
  const passwordInput = $("password");
  for (const [input, err] of [[loginInput, "login-err"], [passwordInput, "password-err"]]) {
    clearField(input, $(err));
  }
  quiet($("auth-err"));
  const login = loginInput.value.trim();
  if (!login) return fieldError(loginInput, $("login-err"), "auth.needLogin");
  if (!passwordInput.value) return fieldError(passwordInput, $("password-err"), "auth.needPassword");
  const form = $("auth-form");
  form.setAttribute("aria-busy", "true");
  const answer = register
    ? await api.register(login, passwordInput.value)
    : await api.login(login, passwordInput.value);
  form.removeAttribute("aria-busy");
  if (answer.status === 200) {
    passwordInput.value = "";
    storage()?.setItem(LOGIN_KEY, login);
    announce("auth.loggedIn");
    await enterAccount(true);
    return;
  }
  if (answer.status === 409) return fieldError(loginInput, $("login-err"), "auth.taken");
  if (answer.status === 401) return fieldError(passwordInput, $("password-err"), "auth.wrong");
  if (answer.status === 429) {
    return say($("auth-err"), "auth.throttled", { seconds: answer.retryAfter });
  }
  if (answer.status === 400 && answer.reason) return sayRaw($("auth-err"), answer.reason);
  const [key, params] = commonError(answer) || ["error.other", { reason: answer.status }];
  return say($("auth-err"), key, params);
}

async function onLogout() {
  stopLive(); // the stream closes first, so it never sees the session end
  // Ends the session for every API process and clears the cookie; should the request
  // fail, the page forgets the session all the same.
  await api.logout();
  storage()?.removeItem(LOGIN_KEY);
  showAuth("auth.loggedOut");
  $("login").focus();
}

// --- reading the account ----------------------------------------------------

let refreshing = null;
let refreshAgain = false;

/** Look at orders, balance and withdrawals again; calls during a look queue one more. */
function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return refreshing;
  }
  refreshing = (async () => {
    do {
      refreshAgain = false;
      await load();
    } while (refreshAgain && state.signedIn);
    refreshing = null;
  })();
  return refreshing;
}

async function load() {
  const [orders, balance, withdrawals] = await Promise.all(
    [api.orders(state.limit.orders), api.balance(), api.withdrawals(state.limit.history)]);
  if ([orders, balance, withdrawals].some((a) => a.status === 401)) return sessionEnded();
  if (!state.signedIn) return undefined;
  if (orders.status === 200 || orders.status === 204) {
    noticeChanges(orders.body || []);
    state.more.orders = orders.more;
  }
  if (balance.status === 200) state.balance = balance.body;
  if (withdrawals.status === 200 || withdrawals.status === 204) {
    state.withdrawals = withdrawals.body || [];
    state.more.history = withdrawals.more;
  }
  return renderAll();
}

function noticeChanges(orders) {
  const before = state.statuses;
  state.statuses = new Map(orders.map((o) => [o.number, o.status]));
  state.orders = orders;
  if (!before) return; // the first look: nothing "changed"
  for (const order of orders) {
    const was = before.get(order.number);
    if (was === order.status) continue;
    if (order.status === "PROCESSED") {
      announce("orders.credited", { number: order.number, points: points(order.accrual) });
    } else if (order.status === "INVALID") {
      announce("orders.rejected", { number: order.number });
    }
  }
}

function renderAll() {
  if (!state.signedIn) return;
  $("current").textContent = state.balance ? formatPoints(state.balance.current) : "—";
  $("withdrawn").textContent = state.balance ? formatPoints(state.balance.withdrawn) : "—";
  renderOrders();
  renderHistory();
  const live = $("live");
  live.textContent = t(state.live ? "live.on" : "live.polling");
  live.classList.toggle("on", state.live);
}

function cell(row, label, content, className) {
  const td = row.insertCell();
  td.dataset.label = label;
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  return td;
}

/** One list's rows: ``cellsOf(item, row)`` gives each column's [content, className]. */
function renderList(name, items, cellsOf) {
  const table = $(name);
  const labels = [...table.tHead.rows[0].cells].map((th) => t(th.dataset.i18n));
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const item of items) {
    const row = body.insertRow();
    const cells = cellsOf(item, row);
    cells.forEach(([content, className], i) => cell(row, labels[i], content, className));
  }
  table.hidden = items.length === 0;
  $(`${name}-empty`).hidden = items.length !== 0;
  $(`${name}-more`).hidden = !state.more[name];
}

function renderOrders() {
  renderList("orders", state.orders, (order, row) => {
    row.dataset.number = order.number;
    const badge = document.createElement("span");
    badge.className = `badge s-${String(order.status).toLowerCase()}`;
    badge.textContent = t(`status.${order.status}`);
    return [
      [order.number, "num"],
      [badge],
      [order.accrual === undefined ? "—" : formatPoints(order.accrual), "money"],
      [formatTime(order.uploaded_at)],
    ];
  });
}

function renderHistory() {
  renderList("history", state.withdrawals, (item) => [
    [item.order, "num"],
    [formatPoints(item.sum), "money"],
    [formatTime(item.processed_at)],
  ]);
}

/**
 * A list's markup from its placeholder (``data-list``: its name, which prefixes its
 * ids and words; ``data-columns``): a line for "nothing yet", the table with a header
 * per column, and "show more", which asks for LIST_STEP more items.
 */
function buildList(holder) {
  const name = holder.dataset.list;
  const element = (tag, props) => Object.assign(document.createElement(tag), props);
  const empty = element("p", { id: `${name}-empty`, hidden: true });
  empty.dataset.i18n = `${name}.empty`;
  const table = element("table", { id: name, className: "list", hidden: true });
  const head = table.createTHead().insertRow();
  for (const column of holder.dataset.columns.split(" ")) {
    const th = head.appendChild(element("th", { scope: "col" }));
    th.dataset.i18n = `${name}.${column}`;
  }
  table.createTBody();
  const more = element("button", {
    id: `${name}-more`, type: "button", className: "secondary more", hidden: true,
  });
  more.dataset.i18n = `${name}.more`;
  more.addEventListener("click", () => {
    state.limit[name] += LIST_STEP;
    refresh();
  });
  holder.replaceWith(empty, table, more);
}

// --- updates by themselves: the event stream, polling as the fallback ---------

function startLive() {
  stopLive();
  if (!("EventSource" in window)) return startPolling();
  const stream = new EventSource("/api/user/events");
  state.stream = stream;
  stream.addEventListener("open", () => {
    stopPolling();
    setLive(true);
  });
  // Should notifications ever stop arriving while the stream stays open.
  state.safetyTimer = setInterval(() => {
    if (document.visibilityState === "visible") refresh();
  }, SAFETY_MS);
  stream.addEventListener("change", () => refresh());
  stream.addEventListener("end", (event) => {
    // "replaced": this user has more pages open than the server keeps streams for.
    closeStream();
    startPolling();
    if (event.data !== "replaced") retryStreamLater(POLL_MS);
  });
  stream.addEventListener("error", () => {
    if (stream.readyState === EventSource.CLOSED) {
      // Refused (session ended, or the server is at its stream limit).
      closeStream();
      startPolling();
      retryStreamLater(STREAM_RETRY_MS);
    } else {
      setLive(false); // the browser reconnects by itself; poll meanwhile
      startPolling();
    }
  });
  return undefined;
}

function retryStreamLater(ms) {
  clearTimeout(state.streamTimer);
  state.streamTimer = setTimeout(async () => {
    await refresh();
    if (state.signedIn) startLive();
  }, ms);
}

function closeStream() {
  if (state.stream) state.stream.close();
  state.stream = null;
  clearInterval(state.safetyTimer);
  state.safetyTimer = 0;
  setLive(false);
}

function startPolling() {
  if (state.pollTimer) return;
  state.pollTimer = setInterval(() => {
    if (document.visibilityState === "visible") refresh();
  }, POLL_MS);
}

function stopPolling() {
  clearInterval(state.pollTimer);
  state.pollTimer = 0;
}

function stopLive() {
  closeStream();
  stopPolling();
  clearTimeout(state.streamTimer);
}

function setLive(on) {
  state.live = on;
  if (state.signedIn) renderAll();
}

// --- adding a purchase ----------------------------------------------------------

const NUMBER_PROBLEMS = { digits: "upload.digitsOnly", bad: "upload.luhnBad" };

function checkNumberAsTyped(input, errEl, okEl) {
  const verdict = orderNumberState(input.value);
  clearField(input, errEl);
  if (verdict in NUMBER_PROBLEMS) {
    say(errEl, NUMBER_PROBLEMS[verdict]);
    input.setAttribute("aria-invalid", "true");
  }
  if (okEl) {
    if (verdict === "ok") say(okEl, "upload.luhnOk", {}, "ok");
    else say(okEl, "upload.hint");
  }
  return verdict;
}

async function onUploadSubmit(event) {
  event.preventDefault();
  const input = $("order-number");
  const err = $("order-err");
  const result = $("upload-result");
  quiet(result);
  const verdict = checkNumberAsTyped(input, err, $("order-check"));
  if (verdict !== "ok") {
    return fieldError(input, err, NUMBER_PROBLEMS[verdict] || "upload.digitsOnly");
  }
  const number = input.value.trim();
  const answer = await api.upload(number);
  if (answer.status === 401) return sessionEnded();
  if (answer.status === 202 || answer.status === 200) {
    say(result, answer.status === 202 ? "upload.accepted" : "upload.already", { number }, "ok");
    input.value = "";
    say($("order-check"), "upload.hint");
    return refresh();
  }
  if (answer.status === 409) return fieldError(input, err, "upload.taken", { number });
  if (answer.status === 422) return fieldError(input, err, "upload.invalid", { number });
  if (answer.status === 400 && answer.reason) return fieldRawError(input, err, answer.reason);
  const [key, params] = commonError(answer) || ["error.other", { reason: answer.status }];
  return say(result, key, params);
}

// --- paying with points -------------------------------------------------------

async function onWithdrawSubmit(event) {
  event.preventDefault();
  const orderInput = $("withdraw-order");
  const sumInput = $("withdraw-sum");
  const orderErr = $("withdraw-order-err");
  const sumErr = $("withdraw-sum-err");
  const result = $("withdraw-result");
  quiet(result);
  quiet($("withdraw-err"));
  const verdict = checkNumberAsTyped(orderInput, orderErr, null);
  clearField(sumInput, sumErr);
  if (verdict !== "ok") {
    return fieldError(orderInput, orderErr, NUMBER_PROBLEMS[verdict] || "upload.digitsOnly");
  }
  const sum = exactSum(sumInput.value);
  if (sum === null) return fieldError(sumInput, sumErr, "withdraw.badSum");
  const number = orderInput.value.trim();
  const answer = await api.withdraw(number, sum);
  if (answer.status === 401) return sessionEnded();
  if (answer.status === 200) {
    say(result, "withdraw.done", { sum: points(sum), number }, "ok");
    orderInput.value = "";
    sumInput.value = "";
    return refresh();
  }
  if (answer.status === 402) {
    await refresh();
    const current = state.balance ? state.balance.current : 0;
    return fieldError(sumInput, sumErr, "withdraw.insufficient", { current: points(current) });
  }
  if (answer.status === 409) return fieldError(orderInput, orderErr, "withdraw.conflict", { number });
  if (answer.status === 422) return fieldError(orderInput, orderErr, "upload.invalid", { number });
  if (answer.status === 400 && answer.reason) return fieldRawError(sumInput, sumErr, answer.reason);
  const [key, params] = commonError(answer) || ["error.other", { reason: answer.status }];
  return say($("withdraw-err"), key, params);
}

// --- start --------------------------------------------------------------------

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}

async function start() {
  for (const holder of document.querySelectorAll("[data-list]")) buildList(holder);
  setLanguage(initialLanguage(), false);
  retranslate();
  $("lang").addEventListener("click", () => {
    setLanguage(language() === "ru" ? "en" : "ru", true);
    retranslate();
  });
  $("logout").addEventListener("click", onLogout);
  $("auth-form").addEventListener("submit", onAuthSubmit);
  $("upload-form").addEventListener("submit", onUploadSubmit);
  $("withdraw-form").addEventListener("submit", onWithdrawSubmit);
  $("order-number").addEventListener("input", (event) => {
    quiet($("upload-result"));
    checkNumberAsTyped(event.target, $("order-err"), $("order-check"));
  });
  $("withdraw-order").addEventListener("input", (event) => {
    checkNumberAsTyped(event.target, $("withdraw-order-err"), null);
  });
  $("withdraw-sum").addEventListener("input", () => clearField($("withdraw-sum"), $("withdraw-sum-err")));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state.signedIn) refresh();
  });
  // The session cookie is HttpOnly: asking for the balance is how the page learns
  // whether it is signed in.
  for (;;) {
    const answer = await api.balance();
    if (answer.status === 200) return enterAccount(false);
    if (answer.status === 401) return showAuth();
    const [key, params] = commonError(answer) || ["error.other", { reason: answer.status }];
    say($("loading"), key, params);
    await new Promise((resolve) => { setTimeout(resolve, POLL_MS); });
  }
}

start();
