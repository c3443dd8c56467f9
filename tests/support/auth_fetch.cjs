// Preload (node --require) that adds `Authorization: Bearer $MCP_AUTH_TOKEN` to every
// outgoing HTTP request whose URL starts with $MCP_AUTH_URL_PREFIX, for tools such as
// the MCP conformance CLI that have no option for extra request headers. Inactive
// unless both variables are set; a request that already has an Authorization header
// keeps it.
//
// Wrapping globalThis.fetch alone is not enough: the conformance suite also sends
// requests with the undici package's request() (DNS-rebinding probes, which need a
// forged Host header) and with node:http (SEP-2243 header probes, which need exact
// header casing). All three publish diagnostics-channel events before any header
// is written, so the header is added there: `undici:request:create` covers global
// fetch and every copy of undici, `http.client.request.created` covers node:http.
'use strict';

const diagnosticsChannel = require('node:diagnostics_channel');

const prefix = process.env.MCP_AUTH_URL_PREFIX;
const token = process.env.MCP_AUTH_TOKEN;

function undiciHasAuthorization(headers) {
  if (Array.isArray(headers)) {
    // Flat [name, value, name, value, ...] list (undici >= 6).
    for (let i = 0; i < headers.length; i += 2) {
      if (String(headers[i]).toLowerCase() === 'authorization') return true;
    }
    return false;
  }
  // Raw "name: value\r\n" block (older undici).
  return typeof headers === 'string' && /(^|\r\n)authorization:/i.test(headers);
}

if (prefix && token) {
  const value = `Bearer ${token}`;

  diagnosticsChannel.subscribe('undici:request:create', ({ request }) => {
    const origin = String(request.origin).replace(/\/$/, '');
    if (!`${origin}${request.path}`.startsWith(prefix)) return;
    if (!undiciHasAuthorization(request.headers)) {
      request.addHeader('authorization', value);
    }
  });

  diagnosticsChannel.subscribe('http.client.request.created', ({ request }) => {
    const authority = request.getHeader('host') ?? request.host;
    if (!`${request.protocol}//${authority}${request.path}`.startsWith(prefix)) return;
    if (!request.headersSent && !request.hasHeader('authorization')) {
      request.setHeader('authorization', value);
    }
  });
}
