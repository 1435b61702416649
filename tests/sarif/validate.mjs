// Validates a SARIF file against the SARIF 2.1.0 JSON schema (draft 2020-12).
// Usage: node tests/sarif/validate.mjs FILE.sarif
import fs from 'node:fs';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

const schemaUrl = new URL(
  './node_modules/@microsoft/sarif-multitool-linux/sarif-2.1.0.json',
  import.meta.url,
);
const schema = JSON.parse(fs.readFileSync(schemaUrl, 'utf8'));
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
const validate = ajv.compile(schema);
const data = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
if (!validate(data)) {
  console.error(JSON.stringify(validate.errors, null, 2));
  process.exit(1);
}
console.log('valid SARIF 2.1.0');
