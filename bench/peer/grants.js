// The official Node SDK's half of the side-by-side benchmark (bench/peer/run.sh):
// wechatpay-axios-plugin (0.9.6, installed by run.sh into bench/peer/node_modules)
// grants N coupons against the running mock described by PEER_MOCK (the JSON
// bench/peer/mock.lua printed), with the same keys and the same request as
// bench/peer/grants.lua, sequentially (concurrency 1) or with `concurrency`
// calls in flight, then prints one TSV line:
//
//   client  mode  n  wall_s  cpu_s  mock_cpu_s  crypto_ms  failed  machine_cpu_s
//
// cpu_s is process.cpuUsage() (user + system, all of this process's threads)
// over the timed grants; mock_cpu_s the nginx worker's over the same span;
// crypto_ms one grant's crypto (1 sign + 1 verify + 2 OAEP encryptions) through
// the SDK's own Rsa, measured after the grants on the same keys; machine_cpu_s
// the whole machine's busy CPU time over the span (/proc/stat).
//
//   PEER_MOCK=mock.json node bench/peer/grants.js <concurrency> <n>
//
// The SDK is used as its README shows: `new Wechatpay({ mchid, serial,
// privateKey, certs: { [PUB_KEY_ID]: publicKey } })`, the chained
// `wxpay.v3.multiuse.users._openid_.coupons.post(data, config)`, and
// `Rsa.encrypt(plaintext, publicKey)` for the sensitive fields.  It verifies
// every 2xx response itself (lib/decorator.js, responseVerifier: headers,
// clock window, known serial, SHA256withRSA) and turns a failure into an error.
'use strict';

const fs = require('fs');
const https = require('https');
const path = require('path');
const { Wechatpay, Rsa, Formatter } = require(path.join(__dirname, 'node_modules', 'wechatpay-axios-plugin'));

const concurrency = Number(process.argv[2]);
const n = Number(process.argv[3]);
if (!(concurrency >= 1) || !(n >= 1)) { console.error('usage: grants.js <concurrency> <n>'); process.exit(2); }
const WARMUP = Number(process.env.PEER_WARMUP || 50);
const CLK_TCK = Number(process.env.PEER_CLK_TCK || 100);

const m = JSON.parse(fs.readFileSync(process.env.PEER_MOCK, 'utf8'));
const users = m.users;

// The nginx workers' CPU seconds so far (utime + stime, fields 14 and 15).
function mockCpu() {
  let ticks = 0;
  for (const pid of m.nginx_workers) {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    ticks += Number(fields[11]) + Number(fields[12]);
  }
  return ticks / CLK_TCK;
}

// The machine's busy CPU seconds so far: every CPU's time but idle and iowait.
function machineCpu() {
  const fields = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1, 9).map(Number);
  return fields.reduce((sum, v, i) => (i === 3 || i === 4 ? sum : sum + v), 0) / CLK_TCK;
}

const platformPublicKey = Rsa.from(`file://${m.platform_public_key_file}`, Rsa.KEY_TYPE_PUBLIC);
const wxpay = new Wechatpay({
  mchid: m.mchid,
  serial: m.merchant_serial,
  privateKey: `file://${m.merchant_key_file}`,
  certs: { [m.platform_key_id]: `file://${m.platform_public_key_file}` },
  baseURL: m.base_url,
  // trust the mock's CA; keep-alive, as our client's curl pool does
  httpsAgent: new https.Agent({ ca: fs.readFileSync(m.cafile), keepAlive: true }),
});

const runId = `${Math.floor(Date.now() / 1000)}${Formatter.nonce(6)}`;
let counter = 0;

async function grant(i) {
  const user = users[i % users.length];
  counter += 1;
  const { data } = await wxpay.v3.multiuse.users._openid_.coupons.post({
    stock_id: '9856000',
    out_request_no: `node${runId}${counter}`,
    user_name: Rsa.encrypt(user.name, platformPublicKey),
    id_card_number: Rsa.encrypt(user.id_card, platformPublicKey),
    appid: 'wx233544546545989',
    card_type: 'ID_CARD',
  }, {
    openid: user.openid,
    headers: { 'Wechatpay-Serial': m.platform_key_id },
  });
  if (!data || !data.coupon_id) throw new Error(`no coupon_id in ${JSON.stringify(data)}`);
}

// count grants, `concurrency` workers each calling one after another.
async function grants(count) {
  let next = 0;
  let failed = 0;
  async function worker() {
    while (next < count) {
      next += 1;
      try {
        await grant(next);
      } catch (err) {
        failed += 1;
        console.error('grant failed:', err.message, err.response ? err.response.status : '');
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return failed;
}

function cryptoMs() {
  const privateKey = Rsa.from(`file://${m.merchant_key_file}`, Rsa.KEY_TYPE_PRIVATE);
  const message = `POST\n/v3/multiuse/users/oUpF8uMuAJO_M2pxb1Q9zNjWeS6o/coupons\n1700000000\n${'N'.repeat(32)}\n${'x'.repeat(800)}\n`;
  const signature = Rsa.sign(message, privateKey);
  const runs = [];
  for (let r = 0; r < 3; r += 1) {
    const count = 100;
    const started = process.cpuUsage();
    for (let i = 0; i < count; i += 1) {
      Rsa.sign(message, privateKey);
      Rsa.verify('1700000000\nNONCE\n{"coupon_id":"1"}\n', signature, platformPublicKey);
      Rsa.encrypt('张三', platformPublicKey);
      Rsa.encrypt('110101199003071234', platformPublicKey);
    }
    const used = process.cpuUsage(started);
    runs.push((used.user + used.system) / 1000 / count);
  }
  runs.sort((a, b) => a - b);
  return runs[1];
}

(async () => {
  if (await grants(WARMUP) !== 0) throw new Error('warm-up grants failed');
  const machine0 = machineCpu();
  const mock0 = mockCpu();
  const wall0 = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  const failed = await grants(n);
  const cpuUsed = process.cpuUsage(cpu0);
  const wall = Number(process.hrtime.bigint() - wall0) / 1e9;
  const mock = mockCpu() - mock0;
  const machine = machineCpu() - machine0;
  const cpu = (cpuUsed.user + cpuUsed.system) / 1e6;
  const mode = concurrency === 1 ? 'sequential' : `concurrency ${concurrency}`;
  const name = `Node ${process.versions.node} SDK (OpenSSL ${process.versions.openssl})`;
  process.stdout.write(`${name}\t${mode}\t${n}\t${wall.toFixed(4)}\t${cpu.toFixed(4)}\t${mock.toFixed(4)}\t${cryptoMs().toFixed(4)}\t${failed}\t${machine.toFixed(4)}\n`);
  wxpay.client.v3.defaults.httpsAgent.destroy();
})().catch((err) => { console.error(err); process.exit(1); });
