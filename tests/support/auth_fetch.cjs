// Preload (node --require) that adds `Authorization: Bearer $MCP_AUTH_TOKEN` to every
// fetch() whose URL starts with $MCP_AUTH_URL_PREFIX, for tools such as the MCP
// conformance CLI that have no option for extra request headers. A request that
// already carries an Authorization header keeps it. Inactive unless both are set.
'use strict';

const prefix = process.env.MCP_AUTH_URL_PREFIX;
const token = process.env.MCP_AUTH_TOKEN;

if (prefix && token && typeof globalThis.fetch === 'function') {
  const originalFetch = globalThis.fetch;

  const urlOf = (input) => {
    if (typeof input === 'string') return input;
    if (input instanceof URL) return input.href;
    if (input && typeof input.url === 'string') return input.url; // Request
    return String(input);
  };

  globalThis.fetch = function fetchWithAuth(input, init) {
    if (!urlOf(input).startsWith(prefix)) {
      return originalFetch(input, init);
    }
    const headers = new Headers(
      init && init.headers !== undefined
        ? init.headers
        : input instanceof Request
          ? input.headers
          : undefined
    );
    if (!headers.has('authorization')) {
      headers.set('authorization', `Bearer ${token}`);
    }
    return originalFetch(input, { ...init, headers });
  };
}
