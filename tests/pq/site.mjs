// A TLS site that speaks X25519MLKEM768 (Node.js >= 24: OpenSSL >= 3.5), for the post-quantum
// tests: `node site.mjs CERT KEY [GROUPS]` listens on 127.0.0.1 (a free port, printed on
// stdout), prefers the groups GROUPS (default X25519MLKEM768:X25519), offers ALPN h2 and
// http/1.1 and answers any request with a small HTTP page. Runs until killed.
import fs from 'node:fs';
import tls from 'node:tls';

const [cert, key, groups] = process.argv.slice(2);
const page = 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n';
const server = tls.createServer({
  cert: fs.readFileSync(cert),
  key: fs.readFileSync(key),
  ecdhCurve: groups || 'X25519MLKEM768:X25519',
  ALPNProtocols: ['h2', 'http/1.1'],
  minVersion: 'TLSv1.2',
}, (s) => {
  s.on('error', () => {});
  s.once('data', () => s.end(page));
});
server.on('tlsClientError', () => {});
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
