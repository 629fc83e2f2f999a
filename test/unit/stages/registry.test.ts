import { describe, expect, it } from 'vitest';
import { compileStageValidator } from '../../../src/runtime/schema.js';
import { stages } from '../../../src/stages/index.js';

describe('the stage registry', () => {
  it.each(Object.entries(stages))('%s: key matches kind, schema compiles under strict ajv, every property documented', (key, definition) => {
    expect(definition.kind).toBe(key);
    expect(() => compileStageValidator(definition)).not.toThrow();
    const properties = (definition.paramsSchema.properties ?? {}) as Record<string, { description?: string }>;
    for (const [name, property] of Object.entries(properties)) expect(property.description, `${key}.${name}`).toBeTruthy();
    expect(definition.paramsSchema.additionalProperties).toBe(false);
  });

  it('every consumed artifact type is provided by some kind', () => {
    const provided = new Set(Object.values(stages).flatMap((d) => d.provides));
    for (const definition of Object.values(stages)) for (const type of definition.consumes) expect(provided.has(type), `${definition.kind} consumes ${type}`).toBe(true);
  });
});
