/**
 * JSON Schema validation with ajv: strict schemas, no type coercion, unknown keys are errors,
 * defaults applied in place. Ajv errors become issues with a path and a fix.
 */
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import pipelineSchema from '../../schemas/pipeline.schema.json' with { type: 'json' };
import { didYouMean } from './suggest.js';
import type { ErrorCode } from './error-codes.js';
import type { StageDefinition } from './types.js';

let ajv: Ajv2020 | undefined;
let pipelineValidator: ValidateFunction | undefined;
const stageValidators = new WeakMap<StageDefinition, ValidateFunction>();

function instance(): Ajv2020 {
  ajv ??= new Ajv2020({ strict: true, allErrors: true, verbose: true, useDefaults: true, coerceTypes: false, removeAdditional: false });
  return ajv;
}

export function compilePipelineValidator(): ValidateFunction {
  pipelineValidator ??= instance().compile(pipelineSchema);
  return pipelineValidator;
}

/** Compiles (once per definition) the validator of a stage kind's `with:`. */
export function compileStageValidator(definition: StageDefinition): ValidateFunction {
  let validator = stageValidators.get(definition);
  if (!validator) {
    const { $id: _id, ...schema } = definition.paramsSchema;
    validator = instance().compile(schema);
    stageValidators.set(definition, validator);
  }
  return validator;
}

type Described = ReturnType<typeof describeAjvError>;

/**
 * All of a validation's errors as issues, one per problem: the branch errors of a `oneOf`
 * collapse into one message listing the alternatives, and `propertyNames` wrappers are dropped
 * (their inner error names the key).
 */
export function describeAjvErrors(errors: ErrorObject[], data: unknown): Described[] {
  // A value of the type of one alternative only gets that alternative's errors (`halving: {
  // factor: 1 }`: halving.factor must be >= 2), not the list of the alternatives.
  const fitting = new Map<ErrorObject, string>();
  for (const error of errors.filter((e) => e.keyword === 'oneOf')) {
    const count = ((error.parentSchema?.oneOf as unknown[]) ?? []).length;
    const misfit = (i: number) => errors.some((e) => e.instancePath === error.instancePath && e.schemaPath.startsWith(`${error.schemaPath}/${i}/`) && ['type', 'const', 'enum'].includes(e.keyword));
    const fits = [...Array(count).keys()].filter((i) => !misfit(i));
    if (fits.length === 1) fitting.set(error, `${error.schemaPath}/${fits[0]}/`);
  }
  const oneOfPaths = new Set(errors.filter((e) => e.keyword === 'oneOf' && !fitting.has(e)).map((e) => e.instancePath));
  const out: Described[] = [];
  for (const error of errors) {
    if (error.keyword === 'propertyNames' || fitting.has(error)) continue;
    if ([...fitting].some(([oneOf, branch]) => error.schemaPath.startsWith(`${oneOf.schemaPath}/`) && !error.schemaPath.startsWith(branch))) continue;
    if (oneOfPaths.has(error.instancePath) && error.keyword !== 'oneOf') continue;
    if (error.schemaPath.includes('/oneOf/') && [...oneOfPaths].some((p) => error.instancePath.startsWith(p + '/'))) continue;
    out.push(describeAjvError(error, data));
  }
  return out;
}

/** An ajv error as a path (segments inside the validated value), a code and a message with a hint. */
export function describeAjvError(error: ErrorObject, data: unknown): { code: ErrorCode; path: string; message: string; segments: string[]; atKey: boolean } {
  const segments = error.instancePath.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
  const where = segments.join('.');
  const value = valueAt(data, segments);
  const params = error.params as Record<string, any>;
  const schema = error.parentSchema as Record<string, any> | undefined;
  const known = Object.keys((schema?.properties as object) ?? {});
  if (error.propertyName !== undefined) {
    const name = error.propertyName;
    const full = [...segments, name];
    return { code: 'bad_name', path: full.join('.'), segments: full, atKey: true, message: `'${name}' is not a valid ${segments.at(-1) === 'stages' ? 'stage id' : 'key'}: use lower-case letters, digits and dashes, starting with a letter (^[a-z][a-z0-9-]*$)` };
  }
  switch (error.keyword) {
    case 'additionalProperties': {
      const key = String(params.additionalProperty);
      const full = [...segments, key];
      return { code: 'unknown_key', path: full.join('.'), segments: full, atKey: true, message: `unknown key '${key}'${didYouMean(key, known)}; allowed here: ${known.join(', ')}` };
    }
    case 'required': {
      const key = String(params.missingProperty);
      return { code: 'missing_key', path: where, segments, atKey: false, message: `missing required key '${key}'${where ? ` in ${where}` : ''}` };
    }
    case 'type':
      return { code: 'wrong_type', path: where, segments, atKey: false, message: `${where || 'the file'} must be ${typeName(params.type)}, got ${describeValue(value)}` };
    case 'enum':
      return { code: 'not_allowed', path: where, segments, atKey: false, message: `${where} must be one of ${(params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}, got ${describeValue(value)}${typeof value === 'string' ? didYouMean(value, (params.allowedValues as unknown[]).map(String)) : ''}` };
    case 'const':
      return { code: 'not_allowed', path: where, segments, atKey: false, message: `${where} must be ${JSON.stringify(params.allowedValue)}, got ${describeValue(value)}` };
    case 'pattern':
      return { code: 'bad_format', path: where, segments, atKey: false, message: `${where} must match ${params.pattern}, got ${describeValue(value)}` };
    case 'oneOf': {
      const options = ((schema?.oneOf as Record<string, any>[]) ?? []).map(describeAlternative).join(', or ');
      return { code: 'wrong_type', path: where, segments, atKey: false, message: `${where} must be ${options}, got ${describeValue(value)}` };
    }
    case 'uniqueItems':
      return { code: 'duplicate_item', path: where, segments, atKey: false, message: `${where} lists the same value twice (items ${params.j + 1} and ${params.i + 1}); remove one` };
    case 'minItems':
    case 'maxItems': {
      const count = Array.isArray(value) ? value.length : 0;
      const bound = `${error.keyword === 'minItems' ? 'at least' : 'at most'} ${params.limit} item${params.limit === 1 ? '' : 's'}`;
      return { code: `schema_${error.keyword.toLowerCase()}`, path: where, segments, atKey: false, message: `${where} must list ${bound}, got ${count}` };
    }
    case 'minimum':
    case 'maximum':
    case 'exclusiveMinimum':
    case 'exclusiveMaximum':
      return { code: 'out_of_range', path: where, segments, atKey: false, message: `${where} ${error.message}, got ${describeValue(value)}` };
    default:
      return { code: `schema_${error.keyword.toLowerCase()}`, path: where, segments, atKey: false, message: `${where || 'the file'} ${error.message ?? 'is invalid'}${value !== undefined ? `, got ${describeValue(value)}` : ''}` };
  }
}

function describeAlternative(schema: Record<string, any>): string {
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.enum) return `one of ${(schema.enum as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
  if (schema.type === 'object' && schema.properties) return `a map with ${Object.keys(schema.properties).join(', ')}`;
  if (schema.type === 'array') return `a list${schema.items?.type ? ` of ${typeName(schema.items.type)}s` : ''}`;
  return typeName(schema.type);
}

function typeName(type: unknown): string {
  const names: Record<string, string> = { object: 'a map (key: value)', array: 'a list', integer: 'a whole number', number: 'a number', string: 'a string', boolean: 'true or false' };
  return (Array.isArray(type) ? type : [type]).map((t) => names[String(t)] ?? String(t)).join(' or ');
}

function describeValue(value: unknown): string {
  if (Array.isArray(value)) return 'a list';
  if (value === null) return 'nothing (null)';
  if (typeof value === 'object') return 'a map';
  if (typeof value === 'string') return `the string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value)}`;
  return `${typeof value} ${typeof value === 'number' ? String(value) : JSON.stringify(value)}`;
}

function valueAt(data: unknown, segments: string[]): unknown {
  let node = data;
  for (const segment of segments) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<string, unknown>)[segment];
  }
  return node;
}

/**
 * `params` with the schema's top-level defaults filled in where a key is missing or undefined:
 * what validation does in place, for callers that build params by hand (one source of truth).
 */
export function withSchemaDefaults<T extends object>(schema: { properties?: Record<string, { default?: unknown }> }, params: Partial<T>): T {
  const filled: Record<string, unknown> = {};
  for (const [key, property] of Object.entries(schema.properties ?? {})) {
    if (property.default !== undefined) filled[key] = structuredClone(property.default);
  }
  for (const [key, value] of Object.entries(params)) if (value !== undefined) filled[key] = value;
  return filled as T;
}
