/**
 * The one catalogue of error codes. Every code a `PipelineError` (and its subclasses) or a
 * `ValidationIssue` carries is a key here, with its one meaning; codes are part of the `--json`
 * contract, so renaming one is a breaking change that goes in the CHANGELOG.
 * `docs/error-codes.md` is generated from this object (`npx tsx scripts/gen-reference.ts`) and
 * `test/unit/error-codes.test.ts` keeps both in sync with the sources.
 */
export const ERROR_CODES = {
  // Validation of the pipeline file and the command line (exit 2).
  usage: 'bad command-line usage',
  invalid: 'the pipeline is invalid (a validation error with no issues; never expected)',
  bad_set: 'a --set override is malformed or names no parameter',
  binary_file: 'the pipeline file is not text',
  empty_file: 'the pipeline file is empty',
  file_too_large: 'the pipeline file is too large to be one',
  file_unreadable: 'the pipeline file cannot be read',
  not_a_file: 'the pipeline path is not a regular file',
  yaml_alias_bomb: 'the YAML expands too many aliases',
  'yaml_<code>': 'the YAML does not parse (the code names the parser error, e.g. yaml_bad_indent)',
  cycle: 'the stages depend on each other in a cycle',
  self_need: 'a stage needs its own output',
  unknown_need: 'a stage needs a stage that does not exist',
  missing_input: 'a stage lacks an input its kind requires',
  input_not_found: 'an external input path does not exist',
  path_special: 'a data path is a special file or lies under /proc, /sys or /dev',
  nul_byte: 'the pipeline file holds a NUL byte (a binary file?)',
  invalid_param: "a stage parameter breaks its kind's rules",
  unknown_stage_kind: 'a stage uses a kind that does not exist',
  unknown_stage: 'a command names a stage that is not in the pipeline',
  upstream_not_cached: 'a stage to run alone needs an upstream output that is not cached',
  bad_name: 'a stage id or key is not lower-case-with-dashes',
  unknown_key: 'a key the schema does not allow',
  missing_key: 'a required key is missing',
  wrong_type: 'a value has the wrong type',
  not_allowed: 'a value is not one of the allowed values',
  bad_format: 'a string does not match the required pattern',
  duplicate_item: 'a list holds the same value twice',
  out_of_range: 'a number is outside its allowed range',
  'schema_<keyword>': 'any other JSON Schema rule broken (the code names the keyword)',
  // The artifact store and its locks (exit 3 unless noted).
  store_locked: 'another live process holds the artifact store',
  lock_wait_timeout: '--wait-timeout ran out while another process held the lock',
  store_lock_invalid: 'a lock path is not what the store made there (exit 2)',
  // The run.
  internal: 'a bug in this toolkit: a broken invariant',
  aborted: 'the run was interrupted (SIGINT/SIGTERM)',
  error: 'a failure from outside this toolkit with no code (a system error shows its errno code lower-cased instead, e.g. enoent)',
  dependency_failed: 'the stage was skipped because a stage it needs failed',
  // Backends.
  backend_unknown: 'the backend name is not one this toolkit knows',
  backend_unavailable: 'the backend package is not installed or cannot start',
  backend_unsupported: 'the backend cannot run an operation the way the model uses it (e.g. a wasm kernel on a non-float32 dtype)',
  // Data: ingest, preprocess, shards.
  path_not_found: 'the dataset path does not exist',
  path_not_directory: 'the dataset path is not a folder',
  ambiguous_layout: 'the dataset folder matches more than one layout',
  manifest_not_found: 'the dataset manifest does not exist',
  manifest_invalid: 'the dataset manifest is malformed',
  invalid_params: 'ingest parameters contradict each other',
  no_images: 'no images were found (in the dataset, or in a folder given to predict)',
  bad_images: 'some files are not readable images (and skipping them is not allowed)',
  too_few_classes: 'fewer than two classes have images',
  dataset_unreadable: 'the ingested dataset cannot be read back',
  image_missing: 'an ingested image is gone',
  image_changed: 'an ingested image changed since ingest',
  image_decode: 'an image cannot be decoded',
  image_unreadable: 'an image given to predict cannot be read or decoded',
  shards_unreadable: 'the shards cannot be read',
  shards_corrupt: 'the shards are corrupt',
  split_missing: 'the shards have no split the stage needs',
  record_size: 'a record does not have the size the shard expects',
  record_out_of_range: 'a record index is outside the shard',
  batch_size: 'a batch size is not a positive integer',
  features_unreadable: 'cached frozen features cannot be read',
  frozen_pass_shape: 'the frozen part of the model gives features of an unexpected shape',
  // Models.
  model_not_found: 'the model URL or path does not exist',
  model_fetch_failed: 'the model could not be downloaded',
  model_bad_manifest: "the model's weights manifest is malformed",
  model_too_large: 'a model download is over the size cap (max_download_mb, PIPELINE_MAX_DOWNLOAD_BYTES)',
  model_bad_topology: "the model's topology is malformed",
  model_bad_weights: "the model's weight files do not match its manifest",
  model_has_no_head: 'the model has no classifier head (no classes recorded) yet',
  classes_mismatch: "the model's classes are not the shards' classes",
  input_shape_mismatch: "the model's input shape does not match the records or the preprocessing",
  output_shape_mismatch: "the model's outputs do not match its classes",
  input_adapt_impossible: "the model's input cannot be adapted to the requested shape",
  head_needs_pooling: 'the base gives a feature map and the head has no pooling',
  preprocess_mismatch: 'the preprocessing (size, channels, normalize) differs from the one the base records it was trained with',
  ranking_unreadable: "a rank-bases stage's ranking cannot be read back",
  rank_bad_input: 'a rank-bases candidate cannot be fed the target images (channels), or the split is too small to score',
  layer_not_found: 'a named layer is not in the model',
  layer_index_out_of_range: 'a layer index is outside the model',
  layer_ambiguous_output: 'a layer to cut at has more than one output',
  layer_not_differentiable: 'TF.js has no gradient through a layer to be trained through',
  unfreeze_bad_blocks: 'unfreeze blocks is not a usable number',
  unfreeze_conflicting_options: 'unfreeze options contradict each other',
  // Training.
  no_training_data: 'the train split is empty',
  bad_class_weights: 'class_weights does not give one weight per class',
  nothing_trainable: 'the model has no trainable weights',
  no_learning_rate: 'no learning rate is set and the model records none to derive one from',
  nan_loss: 'the loss became NaN or infinite',
  // Evaluate, prune, export, predict.
  not_probabilities: 'the model outputs are not probabilities',
  gate_metric_unavailable: 'a gate names a metric the evaluation does not produce',
  gate_failed: 'an evaluate gate failed',
  accuracy_drop: "prune lost more accuracy than max_accuracy_drop allows",
  nothing_to_prune: 'no layer has weights to prune',
  auto_sparsity_needs_bound: 'sparsity: auto needs max_accuracy_drop',
  auto_sparsity_needs_val: 'sparsity: auto needs a validation split',
  prune_rebuild_failed: 'the pruned model could not be rebuilt',
  internal_weights_mismatch: 'sparse weights do not round-trip (a bug)',
  export_dir_not_a_folder: 'the export path exists and is not a folder',
  export_dir_not_empty: 'the export folder holds files this toolkit did not write',
  export_copy_failed: 'the export could not be copied to its folder',
  export_invalid: 'an export folder is incomplete or malformed',
  invalid_option: 'a predict option is invalid',
  onnx_unsupported_layer: 'a layer cannot be converted to ONNX',
  onnx_bad_cut: 'the part of the model to convert to ONNX cannot be cut out where asked',
  // The remote cache.
  remote_unreachable: 'the remote cannot be reached',
  remote_auth: 'the remote refused the credentials, or there are none',
  remote_corrupt: 'a blob or manifest on the remote (or to upload) does not match its hash',
  remote_not_found: 'the bucket, or a blob a manifest names, is not on the remote',
  remote_config: 'the remote URL or the client settings are invalid',
  remote_server: 'the remote failed (5xx) after the retries',
  remote_error: 'the remote refused the request for another reason',
} as const;

type CatalogueKey = keyof typeof ERROR_CODES;

/** A catalogue key written `prefix_<what>` stands for a family of codes, e.g. `schema_<keyword>`. */
type FamilyKey = Extract<CatalogueKey, `${string}<${string}>`>;
type FamilyCode<K> = K extends `${infer Prefix}<${string}>` ? `${Prefix}${string}` : never;

/** A stable snake_case error code: a key of the catalogue, or a member of one of its families. */
export type ErrorCode = Exclude<CatalogueKey, FamilyKey> | FamilyCode<FamilyKey>;
