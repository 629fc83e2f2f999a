/** Process entry point: the real stage registry, real stdio, and the exit code. */
import { main } from './cli.js';
import { stages } from './stages/index.js';

process.exitCode = await main(process.argv.slice(2), {
  registry: stages,
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  env: process.env,
  isTTY: Boolean(process.stderr.isTTY),
});
