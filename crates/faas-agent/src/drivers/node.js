// faas context driver for Node: runs each request's code in this one global scope, like
// the REPL. Requests arrive as JSON lines on fd 3, replies leave on fd 4.
const vm = require('vm');
const fs = require('fs');
globalThis.require = require;
const reply = (o) => fs.writeSync(4, JSON.stringify(o) + '\n');
let pending = '';
let queue = Promise.resolve();
async function run(code) {
  let exitCode = 0;
  try {
    const result = vm.runInThisContext(code, { filename: '<context>' });
    if (result && typeof result.then === 'function') await result;
  } catch (e) {
    exitCode = 1;
    process.stderr.write((e && e.stack ? e.stack : String(e)) + '\n');
  }
  reply({ exit_code: exitCode });
}
fs.createReadStream(null, { fd: 3, encoding: 'utf8' }).on('data', (chunk) => {
  pending += chunk;
  let i;
  while ((i = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, i);
    pending = pending.slice(i + 1);
    queue = queue.then(() => run(JSON.parse(line).code));
  }
});
reply({ ready: true });
