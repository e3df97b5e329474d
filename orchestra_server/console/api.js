// Every call the console makes: the token endpoint, the operations API and the consumer API,
// all through the edge this page came from. The token and the credentials that renew it live
// in this module's memory only: a reload or a sign-out forgets them.

const OPS = "/orchestra-ops/v1";
// Renew when this share of the token's lifetime has passed (and at least this long before).
const RENEW_SHARE = 0.8;
const RENEW_MARGIN_SECONDS = 30;

/** A failed call, with the message the page shows. `kind`: unauthorized, forbidden,
 * not_found, invalid, conflict, network, server. */
export class ApiError extends Error {
  constructor(kind, status, message) {
    super(message);
    this.kind = kind;
    this.status = status;
  }
}

const KIND_BY_STATUS = { 400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "invalid", 422: "conflict" };

let session = null;
let renewTimer = null;
const listeners = { signedOut: [] };

/** Called with a reason whenever the session ends other than by signing out. */
export function onSignedOut(listener) {
  listeners.signedOut.push(listener);
}

export function currentSession() {
  return session ? { clientId: session.clientId, tenant: session.tenant, expiresAt: session.expiresAt } : null;
}

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return {};
  }
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string" && body.error) return body.error;
  } catch {
    // not JSON: fall through to the status text
  }
  return `${response.status} ${response.statusText}`.trim();
}

async function fetchToken(clientId, clientSecret) {
  let response;
  try {
    response = await fetch("/oauth/token", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ grant_type: "client_credentials", client_id: clientId, client_secret: clientSecret }),
      cache: "no-store",
    });
  } catch {
    throw new ApiError("network", 0, "The server cannot be reached. Check the connection and try again.");
  }
  if (response.status === 401 || response.status === 400) {
    throw new ApiError("unauthorized", response.status,
      "The client id and secret were not accepted (unknown, wrong, revoked, or without any API permission).");
  }
  if (!response.ok) {
    throw new ApiError("server", response.status, await errorMessage(response));
  }
  const body = await response.json();
  const info = claims(body.access_token);
  return {
    token: body.access_token,
    expiresAt: Date.now() + body.expires_in * 1000,
    lifetime: body.expires_in,
    clientId: info.client_id || clientId,
    tenant: info.tenant_id || "",
  };
}

function scheduleRenewal() {
  clearTimeout(renewTimer);
  if (!session) return;
  const lifetime = session.lifetime;
  const delay = Math.max(1, Math.min(lifetime * RENEW_SHARE, lifetime - RENEW_MARGIN_SECONDS));
  renewTimer = setTimeout(renew, delay * 1000);
}

async function renew() {
  if (!session) return;
  try {
    const fresh = await fetchToken(session.clientId, session.secret);
    session = { ...session, ...fresh };
    scheduleRenewal();
  } catch (error) {
    if (error.kind === "unauthorized") {
      end("The session ended: the consumer can no longer get tokens. Sign in again.");
    } else {
      // A passing network failure: try again shortly, while the current token still works.
      renewTimer = setTimeout(renew, 5000);
    }
  }
}

function end(reason) {
  clearTimeout(renewTimer);
  const had = session !== null;
  session = null;
  if (had) for (const listener of listeners.signedOut) listener(reason);
}

/** Gets a token with the operator's client id and secret; throws ApiError. */
export async function signIn(clientId, clientSecret) {
  const fresh = await fetchToken(clientId.trim(), clientSecret.trim());
  session = { ...fresh, secret: clientSecret.trim() };
  scheduleRenewal();
  return currentSession();
}

export function signOut() {
  clearTimeout(renewTimer);
  session = null;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== "") search.append(name, String(item));
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** One call to the API; the parsed JSON answer, or ApiError. A 401 also ends the session. */
export async function call(method, path, { params, body } = {}) {
  if (!session) throw new ApiError("unauthorized", 401, "Not signed in.");
  if (session.expiresAt <= Date.now()) {
    end("The session expired. Sign in again.");
    throw new ApiError("unauthorized", 401, "The session expired.");
  }
  const headers = { Authorization: `Bearer ${session.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path + query(params), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch {
    throw new ApiError("network", 0, "The server cannot be reached. Check the connection; the page retries by itself.");
  }
  if (response.ok) return response.status === 204 ? {} : response.json();
  const message = await errorMessage(response);
  const kind = KIND_BY_STATUS[response.status] || "server";
  if (kind === "unauthorized") {
    end("The session ended: the token expired or the consumer was revoked. Sign in again.");
  }
  if (kind === "forbidden") {
    const who = path.startsWith(OPS) ? "This consumer is not an operator" : "This consumer may not do this";
    throw new ApiError(kind, 403, `${who}: ${message}.`);
  }
  if (kind === "not_found") throw new ApiError(kind, 404, `Not found (${message}).`);
  throw new ApiError(kind, response.status, message);
}

const enc = encodeURIComponent;

export const ops = {
  definitions: () => call("GET", `${OPS}/definitions`),
  definition: (id, version) => call("GET", `${OPS}/definitions/${enc(id)}`, { params: { version } }),
  instances: (filters) => call("GET", `${OPS}/instances`, { params: filters }),
  instance: (id) => call("GET", `${OPS}/instances/${enc(id)}`),
  history: (id, pageToken) =>
    call("GET", `${OPS}/instances/${enc(id)}/history`, { params: { page_size: 1000, page_token: pageToken } }),
  cancel: (id, reason) => call("POST", `${OPS}/instances/${enc(id)}/cancel`, { body: { reason } }),
  cancelMatching: (filters) => call("POST", `${OPS}/instances:cancel`, { body: filters }),
  incidents: (filters) => call("GET", `${OPS}/incidents`, { params: filters }),
  resolve: (tokenId, action, variables) =>
    call("POST", `${OPS}/tokens/${enc(tokenId)}/resolve`, { body: variables ? { action, variables } : { action } }),
  retryMatching: (filters) => call("POST", `${OPS}/incidents:retry`, { body: filters }),
};

export const consumer = {
  setVariable: (instanceId, name, value) =>
    call("PUT", `/orchestra-api/instance/${enc(instanceId)}/variable/${enc(name)}`, { body: { value } }),
  signal: (tokenId, variables) =>
    call("POST", `/orchestra-api/token/${enc(tokenId)}/signal`, { body: variables ? { variables } : {} }),
};
