// Validates an AsyncAPI document with the official parser (@asyncapi/parser, which runs
// the spec's JSON Schema and the Spectral rulesets), then checks every message example
// against the message's payload and headers schemas (the parser does not for AsyncAPI 3).
// Prints one line per check and ends with `asyncapi: N passed, M failed`; exits non-zero
// when any check failed, i.e. on any diagnostic of severity error or any example that
// does not match its schema. Warnings and hints are printed, not counted.
import { Parser, fromFile, DiagnosticSeverity } from "@asyncapi/parser";
import Ajv from "ajv";

const path = process.argv[2] ?? "../asyncapi.yaml";
let passed = 0;
let failed = 0;
const check = (ok, what, detail = "") => {
  if (ok) {
    passed += 1;
    console.log(`ok - ${what}`);
  } else {
    failed += 1;
    console.log(`not ok - ${what}${detail ? `: ${detail}` : ""}`);
  }
};
const names = { [DiagnosticSeverity.Error]: "error", [DiagnosticSeverity.Warning]: "warning", [DiagnosticSeverity.Information]: "info", [DiagnosticSeverity.Hint]: "hint" };

const { document, diagnostics } = await fromFile(new Parser(), path).parse();
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
for (const d of diagnostics) {
  console.log(`# ${names[d.severity] ?? d.severity} ${d.code} at ${d.path.join(".") || "/"}: ${d.message}`);
}
check(errors.length === 0 && document !== undefined, `${path} parses with no error diagnostics`, `${errors.length} errors`);

if (document) {
  const ajv = new Ajv({ strict: false, allErrors: true });
  const validate = (schema, value) => {
    const v = ajv.compile(schema);
    return v(value) ? "" : ajv.errorsText(v.errors);
  };
  let messages = 0;
  for (const message of document.allMessages()) {
    messages += 1;
    const id = message.id();
    const examples = message.examples().all();
    check(examples.length > 0, `message ${id} has an example`);
    for (const [i, ex] of examples.entries()) {
      const label = `message ${id} example ${ex.name() ?? i + 1}`;
      if (message.hasPayload() && ex.hasPayload()) {
        const err = validate(message.payload().json(), ex.payload());
        check(err === "", `${label}: payload matches the schema`, err);
      }
      if (message.hasHeaders() && ex.hasHeaders()) {
        const err = validate(message.headers().json(), ex.headers());
        check(err === "", `${label}: headers match the schema`, err);
      }
    }
  }
  check(messages > 0, `${messages} messages found`);
}

console.log(`asyncapi: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
