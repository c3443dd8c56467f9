// Preload (node --require) that keeps Node servers off external interfaces: a
// net.Server.listen() call that names no host binds 127.0.0.1 instead of every
// interface. Calls that pass a host, a path (Unix socket) or a handle are untouched.
'use strict';

const net = require('node:net');

const LOOPBACK = '127.0.0.1';
const originalListen = net.Server.prototype.listen;

function isPortLike(value) {
  return (
    typeof value === 'number' ||
    (typeof value === 'string' && value !== '' && !Number.isNaN(Number(value)))
  );
}

net.Server.prototype.listen = function listen(...args) {
  const [first] = args;
  if (first !== null && typeof first === 'object' && !Array.isArray(first)) {
    const usesHandleOrPath = 'path' in first || 'handle' in first || 'fd' in first || '_handle' in first;
    if (!usesHandleOrPath && first.host === undefined) {
      args[0] = { ...first, host: LOOPBACK };
    }
  } else if (first === undefined || typeof first === 'function') {
    // listen() or listen(callback): random port on every interface.
    args.unshift(0, LOOPBACK);
  } else if (isPortLike(first) && (args.length === 1 || typeof args[1] !== 'string')) {
    // listen(port[, backlog][, callback]): insert the host after the port.
    args.splice(1, 0, LOOPBACK);
  }
  return originalListen.apply(this, args);
};
