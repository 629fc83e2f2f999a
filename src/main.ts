/** Process entry point: the real stage registry, real stdio, the TF.js backend, and the exit code. */
import { main } from './cli.js';
import { configureBackend, describeBackend, predictBackend, type BackendPreference } from './ml/backend.js';
import { stages } from './stages/index.js';

process.exitCode = await main(process.argv.slice(2), {
  registry: stages,
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  env: process.env,
  isTTY: Boolean(process.stderr.isTTY),
  backend: {
    configure: (preference) => configureBackend(preference as BackendPreference),
    describe: () => describeBackend()?.name ?? predictBackend().name,
  },
});
