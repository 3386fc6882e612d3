// mtcute's own MTProxy transport (its FakeTLS code for ee secrets) -> mtpx on 127.0.0.1.
// Usage: node client.mjs <mtpx port> <secret>.  Starts a client with in-memory storage and lets
// it create an auth key through the proxy; ../mtcute_interop.py watches the fake DC and kills
// this process when it has seen enough.  Prints one line per connection error.
import { MemoryStorage, MtProxyTcpTransport, TelegramClient } from '@mtcute/node'

const [port, secret] = process.argv.slice(2)
const tg = new TelegramClient({
  apiId: 1,
  apiHash: '00000000000000000000000000000000',
  storage: new MemoryStorage(),
  transport: new MtProxyTcpTransport({ host: '127.0.0.1', port: Number(port), secret }),
  logLevel: 2, // warnings: the FakeTLS check's failure shows here
})
setTimeout(() => process.exit(0), 30000)
try {
  await tg.connect()
  console.log('mtcute: connected')
} catch (e) {
  console.log('mtcute: error', e?.message)
}
