// The Console: a merchant's terminals, payments and transactions, read from the JSON API with the
// credentials typed at sign-in. No framework, no outside fetch; the DOM is built with textContent only.
(function () {
  "use strict";

  var REFRESH_MS = 2000;
  var TRANSACTIONS_REFRESH_MS = 5000;
  var CSV_MAX_PAGES = 100;
  var STORAGE_KEY = "nepting-console";
  // Served at <prefix>/console: the API is at <prefix>/ (API Gateway adds its stage as the prefix).
  var API_BASE = window.location.pathname.replace(/\/console\/?$/, "") + "/";
  var STATUS_LABELS = { 118: "Captured", 125: "Refunded", 113: "Refused", 115: "Cancelled" };
  var STATE_LOOK = {
    pending: ["Sent to terminal", "badge-info"],
    acknowledged: ["On the terminal", "badge-warn"],
    succeeded: ["Succeeded", "badge-ok"],
    failed: ["Failed", "badge-bad"],
    timed_out: ["Timed out", "badge-bad"],
    cancelled: ["Cancelled", "badge-idle"],
  };

  var session = null; // {login, authorization}
  var timer = null;
  var lastTransactionsRefresh = 0;
  var pageCursors = [null]; // cursor of each page seen; the last one is the current page's
  var nextCursor = null;
  var byId = function (id) { return document.getElementById(id); };

  // --- API -------------------------------------------------------------------------------------

  function ApiError(status, code, message) {
    this.status = status;
    this.code = code;
    this.message = message;
  }

  function api(path, params) {
    var url = new URL(API_BASE + path, window.location.origin);
    Object.keys(params || {}).forEach(function (key) {
      if (params[key] !== "" && params[key] !== null && params[key] !== undefined) url.searchParams.set(key, params[key]);
    });
    return fetch(url, {
      headers: {
        Authorization: session.authorization,
        Accept: "application/json",
        // Asks the API to leave the Basic challenge out of a 401: no browser login pop-up over this page.
        "X-Requested-With": "XMLHttpRequest",
      },
      cache: "no-store",
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.ok) return body;
        var error = body && body.error ? body.error : {};
        throw new ApiError(response.status, error.code || "http." + response.status, error.message || response.statusText);
      });
    });
  }

  // --- formatting --------------------------------------------------------------------------------

  function money(minor, currency) {
    // Integer minor units to "12.50 EUR" without floating point.
    var negative = minor < 0;
    var digits = String(Math.abs(minor)).padStart(3, "0");
    return (negative ? "-" : "") + digits.slice(0, -2) + "." + digits.slice(-2) + " " + (currency || "");
  }

  function clock(iso) {
    if (!iso) return "—";
    var date = new Date(iso);
    var pad = function (n, width) { return String(n).padStart(width || 2, "0"); };
    return pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds()) + "." + pad(date.getMilliseconds(), 3);
  }

  function dateTime(iso) {
    if (!iso) return "—";
    var date = new Date(iso);
    return date.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "2-digit" }) + " " + clock(iso);
  }

  function ago(iso) {
    if (!iso) return "never";
    var seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (seconds < 60) return seconds + " s ago";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    return dateTime(iso);
  }

  function delta(fromIso, toIso) {
    var ms = new Date(toIso).getTime() - new Date(fromIso).getTime();
    return ms < 1000 ? "+" + ms + " ms" : "+" + (ms / 1000).toFixed(1) + " s";
  }

  // --- DOM helpers -------------------------------------------------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "className") node.className = attrs[key];
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) {
      if (child !== null && child !== undefined) node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function badge(text, look) {
    return el("span", { className: "badge " + look, text: text });
  }

  function cell(content, className) {
    var td = el("td", className ? { className: className } : {});
    if (typeof content === "string") td.textContent = content;
    else if (content) td.appendChild(content);
    return td;
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren.apply(tbody, rows);
  }

  function showError(error) {
    byId("status-line").textContent = error ? "Could not refresh: " + error.message : "";
  }

  // --- terminals ---------------------------------------------------------------------------------

  function renderTerminals(terminals) {
    var list = byId("terminals");
    list.setAttribute("aria-busy", "true");
    list.replaceChildren.apply(list, terminals.map(function (t) {
      var badges = [
        t.online ? badge("Online", "badge-ok") : badge("Offline", "badge-idle"),
        t.busy ? badge("Busy", "badge-warn") : badge("Free", "badge-idle"),
      ];
      if (!t.cloud_api_enabled) badges.push(badge("Cloud API off", "badge-bad"));
      var seen = el("p", { className: "seen", title: t.last_seen_at || "never seen", text: "Last seen " + ago(t.last_seen_at) });
      return el("li", {
        className: "terminal",
        "data-terminal": t.terminal_id,
        "data-online": String(t.online),
        "data-busy": String(t.busy),
        "aria-label": t.terminal_id + ", " + (t.online ? "online" : "offline") + ", " + (t.busy ? "busy" : "free"),
      }, [el("div", { className: "terminal-id", text: t.terminal_id }), el("div", { className: "badges" }, badges), seen]);
    }));
    list.setAttribute("aria-busy", "false");
    var select = byId("f-terminal");
    var chosen = select.value;
    var options = [el("option", { value: "", text: "Any" })].concat(terminals.map(function (t) {
      return el("option", { value: t.terminal_id, text: t.terminal_id });
    }));
    if (select.options.length !== options.length) {
      select.replaceChildren.apply(select, options);
      select.value = chosen;
    }
  }

  // --- payments ----------------------------------------------------------------------------------

  function timeline(order) {
    var finalLabel = order.state === "pending" || order.state === "acknowledged" ? "Final" : (STATE_LOOK[order.state] || [order.state])[0];
    var steps = [
      ["Received", order.received_at],
      ["Dispatched", order.dispatched_at],
      ["Acknowledged", order.acknowledged_at],
      [finalLabel, order.finished_at],
    ];
    return el("ol", { className: "timeline", "aria-label": "Timeline" }, steps.map(function (step, index) {
      var done = Boolean(step[1]);
      var when = done ? clock(step[1]) + (index > 0 ? " (" + delta(order.received_at, step[1]) + ")" : "") : "—";
      return el("li", { "data-done": String(done) }, [el("strong", { text: step[0] }), " " + when]);
    }));
  }

  function stateBadge(order) {
    var look = STATE_LOOK[order.state] || [order.state, "badge-idle"];
    var text = look[0];
    if (order.state === "failed" && (order.error_code || order.reason)) text += " · " + (order.error_code || order.reason);
    if (order.state === "timed_out" && order.reason) text += " · " + order.reason;
    if (order.late_result) text += " (late)";
    return badge(text, look[1]);
  }

  function orderRow(order, withTransaction) {
    var cells = [
      cell(el("span", { className: "mono", text: order.order_id + (order.attempt > 1 ? " #" + order.attempt : "") })),
      cell(order.terminal_id, "mono"),
      cell(money(order.amount, order.currency), "num"),
      cell(stateBadge(order)),
      cell(timeline(order)),
    ];
    if (withTransaction) {
      cells.push(cell(order.transaction_reference
        ? el("button", { className: "link-button mono", type: "button", "data-reference": order.transaction_reference, text: order.transaction_reference })
        : "—"));
    }
    return el("tr", { "data-order": order.order_id, "data-state": order.state }, cells);
  }

  function renderOrders(inFlight, recent) {
    // The two listings are read at slightly different moments: an order the later one shows final
    // is not shown in flight any more.
    var finished = {};
    recent.forEach(function (o) {
      if (o.state !== "pending" && o.state !== "acknowledged") finished[o.order_id + "#" + o.attempt] = true;
    });
    inFlight = inFlight.filter(function (o) { return !finished[o.order_id + "#" + o.attempt]; });
    replaceRows(byId("in-flight").tBodies[0], inFlight.map(function (o) { return orderRow(o, false); }));
    byId("in-flight-empty").hidden = inFlight.length > 0;
    replaceRows(byId("recent").tBodies[0], recent.map(function (o) { return orderRow(o, true); }));
    byId("recent-empty").hidden = recent.length > 0;
  }

  // --- transactions ------------------------------------------------------------------------------

  function filters() {
    var form = byId("filters");
    var params = {
      status: form.status.value,
      terminal_id: form.terminal_id.value,
      order_id: form.order_id.value.trim(),
      limit: form.limit.value,
    };
    ["from", "to"].forEach(function (name) {
      if (form[name].value) params[name] = new Date(form[name].value).toISOString();
    });
    return params;
  }

  function transactionRow(tx) {
    var flags = tx.flags.length ? el("span", {}, tx.flags.map(function (f) { return badge(f, "badge-warn"); })) : "—";
    var statusLook = tx.status_code === 118 ? "badge-ok" : tx.status_code === 113 ? "badge-bad" : "badge-idle";
    var card = [tx.card.brand, tx.card.masked_pan].filter(Boolean).join(" ");
    return el("tr", { "data-reference": tx.reference, "data-order": tx.order_id }, [
      cell(dateTime(tx.created_at)),
      cell(el("button", { className: "link-button mono", type: "button", "data-reference": tx.reference, text: tx.reference })),
      cell(tx.order_id, "mono"),
      cell(tx.terminal_id, "mono"),
      cell((tx.operation === "Credit" ? "−" : "") + money(tx.amount_minor, tx.currency), "num"),
      cell(badge(tx.status_code + " " + tx.status, statusLook)),
      cell(card || "—", "mono"),
      cell(flags),
    ]);
  }

  function loadTransactions() {
    var params = filters();
    params.cursor = pageCursors[pageCursors.length - 1];
    lastTransactionsRefresh = Date.now();
    return api("v1/transactions", params).then(function (page) {
      byId("filter-error").textContent = "";
      replaceRows(byId("transactions").tBodies[0], page.transactions.map(transactionRow));
      byId("transactions-empty").hidden = page.transactions.length > 0;
      nextCursor = page.next_cursor;
      byId("next").disabled = !nextCursor;
      byId("prev").disabled = pageCursors.length < 2;
      byId("page-label").textContent = "Page " + pageCursors.length;
    }, function (error) {
      if (error.status === 400) byId("filter-error").textContent = error.message;
      else throw error;
    });
  }

  function csvField(value) {
    var text = value === null || value === undefined ? "" : String(value);
    // A spreadsheet must not run what looks like a formula.
    if (/^[=+\-@\t\r]/.test(text)) text = "'" + text;
    return /[",\n\r]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  var CSV_COLUMNS = [
    ["created_at", function (t) { return t.created_at; }],
    ["reference", function (t) { return t.reference; }],
    ["order_id", function (t) { return t.order_id; }],
    ["terminal_id", function (t) { return t.terminal_id; }],
    ["operation", function (t) { return t.operation; }],
    ["status_code", function (t) { return t.status_code; }],
    ["status", function (t) { return t.status; }],
    ["amount", function (t) { return money(t.amount_minor, "").trim(); }],
    ["currency", function (t) { return t.currency; }],
    ["authorization_code", function (t) { return t.authorization_code; }],
    ["card_brand", function (t) { return t.card.brand; }],
    ["masked_pan", function (t) { return t.card.masked_pan; }],
    ["entry_mode", function (t) { return t.card.entry_mode; }],
    ["description", function (t) { return t.description; }],
    ["flags", function (t) { return t.flags.join(" "); }],
    ["updated_at", function (t) { return t.updated_at; }],
  ];

  function downloadCsv() {
    var button = byId("csv");
    var params = filters();
    params.limit = 100;
    var rows = [];
    var pages = 0;
    button.disabled = true;
    button.textContent = "Preparing CSV…";
    function fetchPage(cursor) {
      params.cursor = cursor;
      return api("v1/transactions", params).then(function (page) {
        rows = rows.concat(page.transactions);
        pages += 1;
        if (page.next_cursor && pages < CSV_MAX_PAGES) return fetchPage(page.next_cursor);
        return page.next_cursor;
      });
    }
    fetchPage(null).then(function (leftOver) {
      var lines = [CSV_COLUMNS.map(function (c) { return c[0]; }).join(",")];
      rows.forEach(function (tx) {
        lines.push(CSV_COLUMNS.map(function (c) { return csvField(c[1](tx)); }).join(","));
      });
      var blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv;charset=utf-8" });
      var link = el("a", { href: URL.createObjectURL(blob), download: "transactions-" + new Date().toISOString().replace(/[:.]/g, "-") + ".csv" });
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(function () { URL.revokeObjectURL(link.href); }, 10000);
      byId("filter-error").textContent = leftOver ? "The CSV holds the first " + rows.length + " transactions; narrow the filter for the rest." : "";
    }, function (error) {
      byId("filter-error").textContent = "CSV download failed: " + error.message;
    }).then(function () {
      button.disabled = false;
      button.textContent = "Download CSV";
    });
  }

  // --- transaction detail ------------------------------------------------------------------------

  function facts(pairs) {
    var dl = el("dl", { className: "facts" });
    pairs.forEach(function (pair) {
      dl.appendChild(el("dt", { text: pair[0] }));
      var dd = el("dd");
      if (pair[1] instanceof Node) dd.appendChild(pair[1]);
      else dd.textContent = pair[1] === null || pair[1] === undefined || pair[1] === "" ? "—" : String(pair[1]);
      dl.appendChild(dd);
    });
    return dl;
  }

  function objectFacts(value) {
    if (!value || typeof value !== "object") return el("p", { className: "empty", text: "None." });
    return facts(Object.keys(value).map(function (key) {
      var item = value[key];
      return [key, item !== null && typeof item === "object" ? JSON.stringify(item) : item];
    }));
  }

  function basketTable(basket) {
    if (!basket || !basket.length) return el("p", { className: "empty", text: "No basket." });
    var head = el("thead", {}, [el("tr", {}, ["Product", "Name", "Type", "Qty", "Unit price", "Tax rate", "Discount", "Total"].map(function (h, i) {
      return el("th", { scope: "col", className: i >= 3 ? "num" : "", text: h });
    }))]);
    var body = el("tbody", {}, basket.map(function (line) {
      return el("tr", {}, [
        cell(line.product_reference, "mono"), cell(line.name), cell(line.type),
        cell(String(line.quantity), "num"), cell(String(line.unit_price), "num"), cell(String(line.tax_rate), "num"),
        cell(line.discount === null || line.discount === undefined ? "—" : String(line.discount), "num"), cell(String(line.total_amount), "num"),
      ]);
    }));
    return el("div", { className: "table-wrap" }, [el("table", { className: "data", "aria-label": "Basket" }, [head, body])]);
  }

  function openTransaction(reference) {
    api("v1/transactions/" + encodeURIComponent(reference)).then(function (tx) {
      byId("detail-title").textContent = "Transaction " + tx.reference;
      var flags = tx.flags.length ? el("span", {}, tx.flags.map(function (f) { return badge(f, "badge-warn"); })) : "None";
      byId("detail-body").replaceChildren(
        facts([
          ["Status", tx.status_code + " " + tx.status],
          ["Amount", (tx.operation === "Credit" ? "−" : "") + money(tx.amount_minor, tx.currency)],
          ["Operation", tx.operation],
          ["Order", tx.order_id],
          ["Terminal", tx.terminal_id],
          ["Authorization code", tx.authorization_code],
          ["Card", [tx.card.brand, tx.card.masked_pan, tx.card.entry_mode].filter(Boolean).join(" · ")],
          ["Description", tx.description],
          ["Flags", flags],
          ["Created", dateTime(tx.created_at)],
          ["Updated", dateTime(tx.updated_at)],
        ]),
        el("h3", { text: "Basket" }), basketTable(tx.basket),
        el("h3", { text: "Customer" }), objectFacts(tx.customer),
        el("h3", { text: "Custom data" }), objectFacts(tx.custom_data)
      );
      var dialog = byId("detail");
      if (!dialog.open) dialog.showModal();
    }, function (error) {
      byId("status-line").textContent = error.status === 404
        ? "Transaction " + reference + " is not in the Console yet (the gateway's notice may still be on its way)."
        : "Could not open " + reference + ": " + error.message;
    });
  }

  // --- refresh loop, sign-in ---------------------------------------------------------------------

  function refresh() {
    if (!session) return Promise.resolve();
    var work = [
      api("v1/terminals").then(function (body) { renderTerminals(body.terminals); }),
      Promise.all([api("v1/connector/orders", { state: "in_flight", limit: 20 }), api("v1/connector/orders", { limit: 20 })])
        .then(function (pages) { renderOrders(pages[0].orders, pages[1].orders); }),
    ];
    // The first page follows new transactions; a page further on stays still while it is read.
    if (pageCursors.length === 1 && Date.now() - lastTransactionsRefresh >= TRANSACTIONS_REFRESH_MS) work.push(loadTransactions());
    return Promise.all(work).then(function () {
      showError(null);
      byId("updated-at").textContent = clock(new Date().toISOString());
    }, function (error) {
      if (error.status === 401) signOut("Your credentials were refused; sign in again.");
      else showError(error);
    });
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(function () {
      (document.hidden ? Promise.resolve() : refresh()).then(schedule);
    }, REFRESH_MS);
  }

  function enter(newSession) {
    session = newSession;
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
    byId("sign-in").hidden = true;
    byId("app").hidden = false;
    byId("who").textContent = "Signed in as " + session.login;
    byId("who").hidden = false;
    byId("sign-out").hidden = false;
    pageCursors = [null];
    lastTransactionsRefresh = 0;
    refresh().then(schedule);
  }

  function signOut(message) {
    clearTimeout(timer);
    session = null;
    sessionStorage.removeItem(STORAGE_KEY);
    byId("app").hidden = true;
    byId("sign-in").hidden = false;
    byId("who").hidden = true;
    byId("sign-out").hidden = true;
    byId("password").value = "";
    byId("sign-in-error").textContent = message || "";
    byId("login").focus();
  }

  function signIn(event) {
    event.preventDefault();
    var login = byId("login").value.trim();
    var password = byId("password").value;
    var error = byId("sign-in-error");
    if (!login || !password) {
      error.textContent = "Enter the login and the password.";
      return;
    }
    var candidate = { login: login, authorization: "Basic " + btoa(unescape(encodeURIComponent(login + ":" + password))) };
    session = candidate;
    error.textContent = "";
    api("v1/terminals").then(function () { enter(candidate); }, function (failure) {
      session = null;
      error.textContent = failure.status === 401 ? "Wrong login or password." : "Sign-in failed: " + failure.message;
    });
  }

  function onTableClick(event) {
    var target = event.target.closest("button[data-reference]");
    if (target) openTransaction(target.getAttribute("data-reference"));
  }

  document.addEventListener("DOMContentLoaded", function () {
    byId("sign-in-form").addEventListener("submit", signIn);
    byId("sign-out").addEventListener("click", function () { signOut(""); });
    byId("filters").addEventListener("submit", function (event) {
      event.preventDefault();
      pageCursors = [null];
      loadTransactions().catch(showError);
    });
    byId("f-reset").addEventListener("click", function () {
      byId("filters").reset();
      pageCursors = [null];
      loadTransactions().catch(showError);
    });
    byId("next").addEventListener("click", function () {
      if (!nextCursor) return;
      pageCursors.push(nextCursor);
      loadTransactions().catch(showError);
    });
    byId("prev").addEventListener("click", function () {
      if (pageCursors.length < 2) return;
      pageCursors.pop();
      loadTransactions().catch(showError);
    });
    byId("csv").addEventListener("click", downloadCsv);
    ["recent", "transactions"].forEach(function (id) { byId(id).addEventListener("click", onTableClick); });
    byId("detail-close").addEventListener("click", function () { byId("detail").close(); });
    var saved = sessionStorage.getItem(STORAGE_KEY);
    if (saved) {
      try {
        enter(JSON.parse(saved));
        return;
      } catch (ignored) {
        sessionStorage.removeItem(STORAGE_KEY);
      }
    }
    byId("login").focus();
  });
})();
