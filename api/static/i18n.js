// The page's words in English and Russian, the language choice, and locale formatting.

const MESSAGES = {
  en: {
    skip: "Skip to content",
    settings: "Settings",
    title: "Your loyalty points",
    loading: "Loading…",
    logout: "Log out",
    who: "Signed in as {login}",
    "auth.heading": "Log in or register",
    "auth.intro": "Collect points for your purchases and pay for new orders with them.",
    "auth.login": "Login",
    "auth.password": "Password",
    "auth.submitLogin": "Log in",
    "auth.submitRegister": "Register",
    "auth.needLogin": "Enter a login.",
    "auth.needPassword": "Enter a password.",
    "auth.taken": "This login is taken. Choose another one or log in.",
    "auth.wrong": "Wrong login or password.",
    "auth.throttled": "Too many failed attempts. Try again in {seconds} s.",
    "auth.loggedIn": "You are logged in.",
    "auth.loggedOut": "You are logged out.",
    "auth.expired": "Your session has ended. Please log in again.",
    "balance.heading": "Balance",
    "balance.current": "Points available",
    "balance.withdrawn": "Spent in total",
    "upload.heading": "Add a purchase",
    "upload.number": "Order number",
    "upload.hint": "The digits printed on your receipt.",
    "upload.digitsOnly": "Only digits, please.",
    "upload.luhnBad": "This is not a valid order number: check the digits.",
    "upload.luhnOk": "The number looks valid.",
    "upload.submit": "Add",
    "upload.accepted": "Order {number} accepted. Points will appear once the shop confirms it.",
    "upload.already": "You have already added order {number}.",
    "upload.taken": "Order {number} was added by another customer.",
    "upload.invalid": "{number} is not a valid order number.",
    "orders.heading": "Your orders",
    "orders.empty": "No orders yet.",
    "orders.number": "Order",
    "orders.status": "Status",
    "orders.accrual": "Points",
    "orders.uploaded": "Added",
    "orders.more": "Show older orders",
    "orders.credited": "Order {number}: {points} points credited.",
    "orders.rejected": "Order {number} was not accepted for points.",
    "status.NEW": "New",
    "status.PROCESSING": "Processing",
    "status.PROCESSED": "Credited",
    "status.INVALID": "Rejected",
    "live.on": "Updates live",
    "live.polling": "Updates every few seconds",
    "withdraw.heading": "Pay with points",
    "withdraw.order": "Number of the new order",
    "withdraw.sum": "Points to spend",
    "withdraw.submit": "Pay",
    "withdraw.badSum": "Enter a positive amount with at most two decimals, e.g. 12.50.",
    "withdraw.done": "Done: {sum} points paid for order {number}.",
    "withdraw.insufficient": "Not enough points: you have {current}.",
    "withdraw.conflict": "Order {number} has already been paid with points.",
    "history.heading": "Points spent",
    "history.empty": "Nothing spent yet.",
    "history.order": "Order",
    "history.sum": "Points",
    "history.when": "When",
    "history.more": "Show earlier ones",
    "footer.api": "API documentation",
    "error.unavailable": "The service is briefly unavailable. Try again in a moment.",
    "error.network": "No connection to the server. Check your network and try again.",
    "error.other": "Something went wrong: {reason}",
  },
  ru: {
    skip: "Перейти к содержимому",
    settings: "Настройки",
    title: "Ваши баллы лояльности",
    loading: "Загрузка…",
    logout: "Выйти",
    who: "Вы вошли как {login}",
    "auth.heading": "Вход и регистрация",
    "auth.intro": "Получайте баллы за покупки и оплачивайте ими новые заказы.",
    "auth.login": "Логин",
    "auth.password": "Пароль",
    "auth.submitLogin": "Войти",
    "auth.submitRegister": "Зарегистрироваться",
    "auth.needLogin": "Введите логин.",
    "auth.needPassword": "Введите пароль.",
    "auth.taken": "Этот логин занят. Выберите другой или войдите.",
    "auth.wrong": "Неверный логин или пароль.",
    "auth.throttled": "Слишком много неудачных попыток. Повторите через {seconds} с.",
    "auth.loggedIn": "Вы вошли.",
    "auth.loggedOut": "Вы вышли.",
    "auth.expired": "Сеанс завершён. Войдите снова.",
    "balance.heading": "Баланс",
    "balance.current": "Доступно баллов",
    "balance.withdrawn": "Потрачено всего",
    "upload.heading": "Добавить покупку",
    "upload.number": "Номер заказа",
    "upload.hint": "Цифры, напечатанные на чеке.",
    "upload.digitsOnly": "Только цифры.",
    "upload.luhnBad": "Такого номера заказа не бывает: проверьте цифры.",
    "upload.luhnOk": "Номер выглядит верным.",
    "upload.submit": "Добавить",
    "upload.accepted": "Заказ {number} принят. Баллы появятся, когда магазин его подтвердит.",
    "upload.already": "Вы уже добавили заказ {number}.",
    "upload.taken": "Заказ {number} добавил другой покупатель.",
    "upload.invalid": "{number} — неверный номер заказа.",
    "orders.heading": "Ваши заказы",
    "orders.empty": "Заказов пока нет.",
    "orders.number": "Заказ",
    "orders.status": "Статус",
    "orders.accrual": "Баллы",
    "orders.uploaded": "Добавлен",
    "orders.more": "Показать более ранние заказы",
    "orders.credited": "Заказ {number}: начислено {points} баллов.",
    "orders.rejected": "Заказ {number} не принят для начисления баллов.",
    "status.NEW": "Новый",
    "status.PROCESSING": "Обрабатывается",
    "status.PROCESSED": "Начислено",
    "status.INVALID": "Отклонён",
    "live.on": "Обновляется сразу",
    "live.polling": "Обновляется каждые несколько секунд",
    "withdraw.heading": "Оплатить баллами",
    "withdraw.order": "Номер нового заказа",
    "withdraw.sum": "Сколько баллов списать",
    "withdraw.submit": "Оплатить",
    "withdraw.badSum": "Введите положительную сумму, не больше двух знаков после запятой, например 12,50.",
    "withdraw.done": "Готово: {sum} баллов списано за заказ {number}.",
    "withdraw.insufficient": "Недостаточно баллов: у вас {current}.",
    "withdraw.conflict": "Заказ {number} уже оплачен баллами.",
    "history.heading": "Списания",
    "history.empty": "Списаний пока нет.",
    "history.order": "Заказ",
    "history.sum": "Баллы",
    "history.when": "Когда",
    "history.more": "Показать более ранние",
    "footer.api": "Документация API",
    "error.unavailable": "Сервис ненадолго недоступен. Повторите чуть позже.",
    "error.network": "Нет связи с сервером. Проверьте сеть и повторите.",
    "error.other": "Что-то пошло не так: {reason}",
  },
};

export const LANGUAGES = Object.keys(MESSAGES);
const STORED = "gophermart.lang";

let current = "en";

/** The saved choice, else the browser's first language we speak, else English. */
export function initialLanguage() {
  const saved = safeStorage()?.getItem(STORED);
  if (LANGUAGES.includes(saved)) return saved;
  for (const tag of navigator.languages || [navigator.language]) {
    const base = String(tag).slice(0, 2).toLowerCase();
    if (LANGUAGES.includes(base)) return base;
  }
  return "en";
}

export function setLanguage(lang, remember) {
  current = LANGUAGES.includes(lang) ? lang : "en";
  document.documentElement.lang = current;
  if (remember) safeStorage()?.setItem(STORED, current);
}

export function language() {
  return current;
}

export function t(key, params = {}) {
  const text = MESSAGES[current][key] ?? MESSAGES.en[key] ?? key;
  // A parameter may be a function: formatted when shown, so in the language shown.
  return text.replace(/\{(\w+)\}/g, (_, name) => {
    const value = params[name];
    return String(typeof value === "function" ? value() : value ?? "");
  });
}

/** Fill every [data-i18n] element's text and [data-i18n-label] element's aria-label. */
export function translatePage() {
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-label]")) {
    el.setAttribute("aria-label", t(el.dataset.i18nLabel));
  }
}

const LOCALES = { en: "en-GB", ru: "ru-RU" };

/** Points the way the locale writes money: two decimals, its own separators. */
export function formatPoints(value) {
  return new Intl.NumberFormat(LOCALES[current], {
    minimumFractionDigits: 2, maximumFractionDigits: 2,
  }).format(Number(value));
}

export function formatTime(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return iso;
  return new Intl.DateTimeFormat(LOCALES[current], {
    dateStyle: "medium", timeStyle: "short",
  }).format(when);
}

function safeStorage() {
  try {
    return window.localStorage;
  } catch {
    return null; // storage disabled: the choice lasts for this page only
  }
}
