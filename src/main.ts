/** Process entry point: the real stage registry, real stdio, the TF.js backend, and the exit code. */
import { backendUnavailable, configureBackend, describeBackend, predictBackend, type BackendPreference } from './ml/backend.js';
import { main, NO_BACKEND } from './cli.js';
import { stages } from './stages/index.js';

// A reader that goes away (`pipeline run … | head -1`) must not kill a run halfway: output to a
// closed pipe is dropped, the run finishes and its summary is still written to the store.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});

// The AWS SDK (the remote cache) prints a 9-line NodeVersionSupportWarning on every command on
// Node 20, which package.json supports; say it once in the README, not on every run. Setting the
// variable yourself (to anything but 'true') brings it back. Job processes of `worker` inherit it.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

process.exitCode = await main(process.argv.slice(2), {
  registry: stages,
  // Child processes of `run --tf-jobs` load the same registry.
  registryModule: { url: new URL('./stages/index.js', import.meta.url).href, name: 'stages' },
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  env: process.env,
  isTTY: Boolean(process.stderr.isTTY),
  stderrStream: process.stderr,
  backend: {
    configure: (preference) => configureBackend(preference as BackendPreference),
    // A run whose stages were all cached (or needed no TF.js) loaded no backend: say so rather
    // than name one that was never used (and may not even be installed).
    describe: () => describeBackend()?.name ?? NO_BACKEND,
    unavailable: (preference) => backendUnavailable(preference as BackendPreference),
    predict: () => predictBackend().name,
  },
});
