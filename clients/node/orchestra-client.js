'use strict';
// A small Node.js client for the Orchestra gRPC API.
//
// The service definitions are loaded from the repository's proto/ directory
// at runtime (no generated code): `@grpc/proto-loader` reads
// orchestra/v1/*.proto together with the vendored google/api annotations;
// google/protobuf/*.proto (struct, any, descriptor) come bundled with
// protobufjs.
//
//   const { connect } = require('./orchestra-client');
//   const client = connect('127.0.0.1:50051');
//   await client.login(clientId, clientSecret);   // renewed by itself from then on
//   const id = await client.startProcess('three_step', { amount: 12.5 });
//   const instance = await client.getInstance(id);
//   await client.signalToken(instance.tokens[0].id);
//   client.close();
//
// A consumer holding `operate orchestra` also reaches the operations API
// (orchestra.v1.OperationsService) through the same client: searchInstances,
// getInstanceDetail, listIncidents, resolveIncident, cancelInstance and the
// rest below. Counts come back as numbers and times as Date objects.
//
// Every call returns a promise of plain JavaScript values. A failed call
// rejects with the grpc-js error: `err.code` is the gRPC status code (see
// `status` below) and `err.details` the server's message.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULT_PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');
const DEFAULT_DEADLINE_MS = 30_000;
// The largest message either way: the service's published variable limits times the
// growth of JSON into protobuf (orchestra_server/wire/message_sizes.py), well past
// grpc-js's default 4 MiB receive limit.
const MAX_MESSAGE_BYTES = 11_599_872;
const CHANNEL_OPTIONS = {
  'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
};
// A token this close to its expiry is renewed before the next call.
const REFRESH_MARGIN_MS = 30_000;
const PROTO_FILES = [
  'orchestra/v1/orchestra_service.proto',
  'orchestra/v1/auth_service.proto',
  'orchestra/v1/operations_service.proto',
];

// The directory holding protobufjs's own google/protobuf/*.proto files, found
// through proto-loader so that the copy proto-loader uses is the one named.
function wellKnownTypesDir() {
  const loaderDir = path.dirname(require.resolve('@grpc/proto-loader'));
  return path.dirname(require.resolve('protobufjs/package.json', { paths: [loaderDir] }));
}

const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});

const packageCache = new Map();

// Loads the services from `protoDir` (default: the repository's proto/).
function loadPackage(protoDir = DEFAULT_PROTO_DIR) {
  const dir = path.resolve(protoDir);
  let loaded = packageCache.get(dir);
  if (loaded === undefined) {
    const definition = protoLoader.loadSync(PROTO_FILES, {
      ...LOADER_OPTIONS,
      includeDirs: [dir, wellKnownTypesDir()],
    });
    const valueFields = definition['google.protobuf.Value'].type.field.map((f) => f.name);
    if (!valueFields.includes('numberValue')) {
      throw new Error(`unexpected google.protobuf.Value field names: ${valueFields.join(', ')}`);
    }
    loaded = grpc.loadPackageDefinition(definition);
    packageCache.set(dir, loaded);
  }
  return loaded;
}

// --- google.protobuf.Value <-> plain JSON values ------------------------------------------
//
// google/protobuf/struct.proto is not parsed from a file: protobufjs supplies
// its bundled definition, whose field names are camelCase (`numberValue`)
// whatever `keepCase` says. Orchestra's own messages keep their snake_case
// names. loadPackage checks this assumption once.

// Converts a JSON-compatible JavaScript value into a google.protobuf.Value
// object. Numbers travel as IEEE doubles: integers beyond 2^53 lose precision.
function toValue(value) {
  if (value === null) {
    return { nullValue: 'NULL_VALUE' };
  }
  switch (typeof value) {
    case 'boolean':
      return { boolValue: value };
    case 'number':
      if (!Number.isFinite(value)) {
        throw new TypeError(`${value} is not a JSON number`);
      }
      return { numberValue: value };
    case 'string':
      return { stringValue: value };
    case 'object':
      if (Array.isArray(value)) {
        return { listValue: { values: value.map(toValue) } };
      }
      return { structValue: { fields: toFields(value) } };
    default:
      throw new TypeError(`a ${typeof value} is not a JSON value`);
  }
}

function toFields(object) {
  const fields = {};
  for (const [name, item] of Object.entries(object)) {
    if (item !== undefined) {
      fields[name] = toValue(item);
    }
  }
  return fields;
}

// Converts a decoded google.protobuf.Value back into a plain JavaScript value.
function fromValue(value) {
  switch (value && value.kind) {
    case 'numberValue':
      return value.numberValue;
    case 'stringValue':
      return value.stringValue;
    case 'boolValue':
      return value.boolValue;
    case 'structValue':
      return fromFields(value.structValue.fields);
    case 'listValue':
      return (value.listValue.values || []).map(fromValue);
    default:
      return null;
  }
}

function fromFields(fields) {
  const object = {};
  for (const [name, item] of Object.entries(fields || {})) {
    object[name] = fromValue(item);
  }
  return object;
}

// --- the client ---------------------------------------------------------------------------

function call(stub, method, request, metadata, deadlineMs) {
  return new Promise((resolve, reject) => {
    const options = { deadline: new Date(Date.now() + deadlineMs) };
    stub[method](request, metadata, options, (error, response) => {
      if (error) {
        reject(error);
      } else {
        resolve(response);
      }
    });
  });
}

class OrchestraClient {
  // target: `host:port` of `orchestra serve`. Options:
  //   credentials  grpc channel credentials (default: insecure, for loopback)
  //   protoDir     where orchestra/v1/*.proto live (default: the repository's proto/)
  //   deadlineMs   per-call deadline (default 30 s)
  //   accessToken  a bearer token to start with
  constructor(target, options = {}) {
    const pkg = loadPackage(options.protoDir);
    const credentials = options.credentials || grpc.credentials.createInsecure();
    this.orchestra = new pkg.orchestra.v1.OrchestraService(target, credentials, CHANNEL_OPTIONS);
    // The auth and operations stubs share the channel of the service stub.
    const shared = { channelOverride: this.orchestra.getChannel() };
    this.auth = new pkg.orchestra.v1.AuthService(target, credentials, shared);
    this.operations = new pkg.orchestra.v1.OperationsService(target, credentials, shared);
    this.deadlineMs = options.deadlineMs || DEFAULT_DEADLINE_MS;
    this.accessToken = options.accessToken || null;
    // Set by login(): the client then renews its token before it expires, and once more
    // when the service refuses it (a rotated key, a restarted issuer).
    this.tokenExpiresAt = null;
    this._credentials = null;
    this._renewing = null;
  }

  // The OAuth 2.0 client-credentials grant over AuthService.IssueToken: the
  // form-encoded request goes in an HttpBody, the JSON answer comes back in
  // one. Resolves to the parsed answer ({access_token, token_type, expires_in}).
  async issueToken(clientId, clientSecret) {
    const form = new URLSearchParams({
      grant_type: 'client_credentials',
      client_id: clientId,
      client_secret: clientSecret,
    });
    const request = {
      http_body: {
        content_type: 'application/x-www-form-urlencoded',
        data: Buffer.from(form.toString(), 'utf8'),
      },
    };
    const answer = await call(this.auth, 'IssueToken', request, new grpc.Metadata(), this.deadlineMs);
    return JSON.parse(Buffer.from(answer.http_body.data).toString('utf8'));
  }

  // Issues a token and uses it for the calls that follow, renewing it as
  // needed with the same credentials. Resolves to the token answer.
  async login(clientId, clientSecret) {
    const answer = await this.issueToken(clientId, clientSecret);
    this._credentials = { clientId, clientSecret };
    this._useToken(answer);
    return answer;
  }

  _useToken(answer) {
    this.accessToken = answer.access_token;
    this.tokenExpiresAt = Date.now() + answer.expires_in * 1000;
  }

  // One renewal at a time: calls that find the token stale together share it.
  async _renew() {
    if (!this._renewing) {
      const { clientId, clientSecret } = this._credentials;
      this._renewing = this.issueToken(clientId, clientSecret)
        .then((answer) => this._useToken(answer))
        .finally(() => {
          this._renewing = null;
        });
    }
    await this._renewing;
  }

  _metadata(extra = {}) {
    const metadata = new grpc.Metadata();
    if (this.accessToken) {
      metadata.set('authorization', `Bearer ${this.accessToken}`);
    }
    for (const [key, value] of Object.entries(extra)) {
      metadata.set(key, value);
    }
    return metadata;
  }

  async _call(method, request, extraMetadata) {
    return this._callOn(this.orchestra, method, request, extraMetadata);
  }

  async _callOn(stub, method, request, extraMetadata) {
    if (this._credentials && Date.now() >= this.tokenExpiresAt - REFRESH_MARGIN_MS) {
      await this._renew();
    }
    const sent = this.accessToken;
    try {
      return await call(stub, method, request, this._metadata(extraMetadata), this.deadlineMs);
    } catch (error) {
      // A refused token is checked before the call does anything, so even a start is safe to
      // send again with a new one.
      if (error.code !== grpc.status.UNAUTHENTICATED || !this._credentials) {
        throw error;
      }
      if (this.accessToken === sent) {
        await this._renew();
      }
      return call(stub, method, request, this._metadata(extraMetadata), this.deadlineMs);
    }
  }

  // Starts an instance of the newest version of `definitionId`; resolves to
  // its id. With `idempotencyKey`, a retried start answers the first id.
  async startProcess(definitionId, variables = {}, { idempotencyKey } = {}) {
    const extra = idempotencyKey === undefined ? {} : { 'idempotency-key': idempotencyKey };
    const answer = await this._call(
      'StartProcess',
      { definition_id: definitionId, variables: toFields(variables) },
      extra,
    );
    return answer.instance_id;
  }

  // One page of instance summaries, newest first:
  // { instances: [{id, definition_id, status}], next_page_token }.
  async listInstances({ definitionId = '', status = '', pageSize = 0, pageToken = '' } = {}) {
    const answer = await this._call('ListInstances', {
      definition_id: definitionId,
      status,
      page_size: pageSize,
      page_token: pageToken,
    });
    return {
      instances: answer.instances.map((s) => ({ id: s.id, definition_id: s.definition_id, status: s.status })),
      next_page_token: answer.next_page_token,
    };
  }

  // The instance with its live tokens:
  // { id, definition_id, status, tenant_id, tokens: [{id, node_id, status}] }.
  async getInstance(instanceId) {
    const { instance } = await this._call('GetInstance', { instance_id: instanceId });
    return {
      id: instance.id,
      definition_id: instance.definition_id,
      status: instance.status,
      tenant_id: instance.tenant_id,
      tokens: instance.tokens.map((t) => ({ id: t.id, node_id: t.node_id, status: t.status })),
    };
  }

  // Signals a parked token, first setting `variables` (if any) in the same
  // transaction; resolves to 'signalled'.
  async signalToken(tokenId, variables = {}) {
    const answer = await this._call('SignalToken', { token_id: tokenId, variables: toFields(variables) });
    return answer.status;
  }

  // The instance's variables as a plain object (empty for an inaccessible instance).
  async getVariables(instanceId) {
    const answer = await this._call('GetVariables', { instance_id: instanceId });
    return fromFields(answer.variables);
  }

  // Creates or replaces one variable of a running instance; resolves to 'set'.
  async setVariable(instanceId, name, value) {
    const answer = await this._call('SetVariable', {
      instance_id: instanceId,
      name,
      value: toValue(value),
    });
    return answer.status;
  }

  // --- the operations API (needs `operate orchestra`; deploy needs `deploy orchestra definitions`)

  _operate(method, request) {
    return this._callOn(this.operations, method, request);
  }

  // Validates and deploys a definition's YAML or JSON source:
  // { definition_id, version, changed, scope }.
  async deployDefinition(source, { scope = '' } = {}) {
    const answer = await this._operate('DeployDefinition', { source, scope });
    return { definition_id: answer.definition_id, version: answer.version, changed: answer.changed, scope: answer.scope };
  }

  // Every definition available to the tenant: [{ definition_id, latest_version, label, scope,
  // running_instances, open_incidents, versions: [{ version, deployed_at, running_instances }] }].
  async listDefinitions() {
    const answer = await this._operate('ListDefinitions', {});
    return answer.definitions.map((d) => ({
      definition_id: d.definition_id,
      latest_version: d.latest_version,
      label: d.label,
      scope: d.scope,
      running_instances: Number(d.running_instances),
      open_incidents: Number(d.open_incidents),
      versions: d.versions.map((v) => ({
        version: v.version,
        deployed_at: fromTimestamp(v.deployed_at),
        running_instances: Number(v.running_instances),
      })),
    }));
  }

  // One version (0: the newest) as a graph: { definition_id, version, latest_version, label,
  // scope, deployed_at, nodes: [{ id, type, ..., tokens: { parked, waiting, incident } }], flows }.
  async getDefinition(definitionId, { version = 0 } = {}) {
    const answer = await this._operate('GetDefinition', { definition_id: definitionId, version });
    return {
      definition_id: answer.definition_id,
      version: answer.version,
      latest_version: answer.latest_version,
      label: answer.label,
      scope: answer.scope,
      deployed_at: fromTimestamp(answer.deployed_at),
      nodes: answer.nodes.map((n) => ({
        id: n.id,
        type: n.type,
        label: n.label,
        join: n.join,
        split: n.split,
        threshold: n.threshold,
        timer_after: n.timer_after,
        timer_until: n.timer_until,
        timeout_after: n.timeout_after,
        timeout_to: n.timeout_to,
        tokens: {
          parked: Number(n.tokens ? n.tokens.parked : 0),
          waiting: Number(n.tokens ? n.tokens.waiting : 0),
          incident: Number(n.tokens ? n.tokens.incident : 0),
        },
      })),
      flows: answer.flows.map((f) => ({
        order: f.order,
        from_node: f.from_node,
        to_node: f.to_node,
        condition: f.condition,
        default: f.default,
        timeout: f.timeout,
      })),
    };
  }

  // One page of the tenant's instances matching every filter, newest first:
  // { instances: [{ id, definition_id, definition_version, status, started_at, updated_at,
  // ended_at, open_incidents }], next_page_token }. `variables` is { name: JSON value }.
  async searchInstances(filters = {}) {
    const { pageSize = 0, pageToken = '' } = filters;
    const answer = await this._operate('SearchInstances', {
      ...instanceFilters(filters),
      status: filters.status || '',
      page_size: pageSize,
      page_token: pageToken,
    });
    return {
      instances: answer.instances.map((i) => ({
        id: i.id,
        definition_id: i.definition_id,
        definition_version: i.definition_version,
        status: i.status,
        started_at: fromTimestamp(i.started_at),
        updated_at: fromTimestamp(i.updated_at),
        ended_at: fromTimestamp(i.ended_at),
        open_incidents: Number(i.open_incidents),
      })),
      next_page_token: answer.next_page_token,
    };
  }

  // The instance with its variables and live tokens (incident kind and reason on incidents).
  async getInstanceDetail(instanceId) {
    const { instance } = await this._operate('GetInstanceDetail', { instance_id: instanceId });
    return {
      id: instance.id,
      definition_id: instance.definition_id,
      definition_version: instance.definition_version,
      status: instance.status,
      started_at: fromTimestamp(instance.started_at),
      updated_at: fromTimestamp(instance.updated_at),
      ended_at: fromTimestamp(instance.ended_at),
      variables: fromFields(instance.variables ? instance.variables.fields : {}),
      tokens: instance.tokens.map((t) => ({
        id: t.id,
        node_id: t.node_id,
        status: t.status,
        since: fromTimestamp(t.since),
        due_at: fromTimestamp(t.due_at),
        incident_kind: optional(t, 'incident_kind'),
        incident_reason: optional(t, 'incident_reason'),
      })),
    };
  }

  // One page of the instance's audit trail, oldest first: { entries, next_page_token }.
  async getInstanceHistory(instanceId, { pageSize = 0, pageToken = '' } = {}) {
    const answer = await this._operate('GetInstanceHistory', {
      instance_id: instanceId,
      page_size: pageSize,
      page_token: pageToken,
    });
    return {
      entries: answer.entries.map((e) => ({
        at: fromTimestamp(e.at),
        actor: e.actor,
        action: e.action,
        nodes: e.nodes,
        tokens_consumed: e.tokens_consumed,
        tokens_created: e.tokens_created,
        variables: e.variables,
        status: e.status,
        incidents: e.incidents,
        reason: e.reason,
      })),
      next_page_token: answer.next_page_token,
    };
  }

  // Cancels a running instance; resolves to 'cancelled'.
  async cancelInstance(instanceId, { reason = '' } = {}) {
    const answer = await this._operate('CancelInstance', { instance_id: instanceId, reason });
    return answer.status;
  }

  // One page of the tenant's open incidents, oldest first: { incidents: [{ instance_id,
  // definition_id, definition_version, token_id, node_id, kind, reason, since }], next_page_token }.
  async listIncidents({ definitionId = '', nodeId = '', pageSize = 0, pageToken = '' } = {}) {
    const answer = await this._operate('ListIncidents', {
      definition_id: definitionId,
      node_id: nodeId,
      page_size: pageSize,
      page_token: pageToken,
    });
    return {
      incidents: answer.incidents.map((i) => ({
        instance_id: i.instance_id,
        definition_id: i.definition_id,
        definition_version: i.definition_version,
        token_id: i.token_id,
        node_id: i.node_id,
        kind: i.kind,
        reason: i.reason,
        since: fromTimestamp(i.since),
      })),
      next_page_token: answer.next_page_token,
    };
  }

  // Sets `variables`, then 'retry', 'skip' or 'cancel_branch' on a token in incident;
  // resolves to the instance's status afterwards.
  async resolveIncident(tokenId, action, variables = {}) {
    const answer = await this._operate('ResolveIncident', {
      token_id: tokenId,
      action,
      variables: toFields(variables),
    });
    return answer.instance_status;
  }

  // Cancels the running instances matching the filters (as searchInstances, without status):
  // { matched, done, skipped, failed, errors }.
  async cancelInstances(filters = {}) {
    const { reason = '', dryRun = false, max = 0 } = filters;
    const answer = await this._operate('CancelInstances', {
      ...instanceFilters(filters),
      reason,
      dry_run: dryRun,
      max,
    });
    return batchOutcome(answer);
  }

  // Retries the open incidents matching the filters: { matched, done, skipped, failed, errors }.
  async retryIncidents({ definitionId = '', nodeId = '', dryRun = false, max = 0 } = {}) {
    const answer = await this._operate('RetryIncidents', {
      definition_id: definitionId,
      node_id: nodeId,
      dry_run: dryRun,
      max,
    });
    return batchOutcome(answer);
  }

  close() {
    this.orchestra.close();
  }
}

// --- the operations API's values -------------------------------------------------------------

// A google.protobuf.Timestamp as a Date; null when unset.
function fromTimestamp(stamp) {
  if (!stamp) {
    return null;
  }
  return new Date(Number(stamp.seconds) * 1000 + Math.floor(stamp.nanos / 1e6));
}

// A proto3 `optional` field: its value when set, else null.
function optional(message, name) {
  return message[`_${name}`] === name ? message[name] : null;
}

function rfc3339(moment) {
  if (moment === undefined || moment === null) {
    return '';
  }
  return moment instanceof Date ? moment.toISOString() : String(moment);
}

// The instance filters in their wire form; each variable filter as `name=<JSON>`.
function instanceFilters({
  definitionId = '',
  version = 0,
  hasIncident,
  nodeId = '',
  startedAfter,
  startedBefore,
  variables = {},
} = {}) {
  const request = {
    definition_id: definitionId,
    version,
    node_id: nodeId,
    started_after: rfc3339(startedAfter),
    started_before: rfc3339(startedBefore),
    variable: Object.entries(variables).map(([name, value]) => `${name}=${JSON.stringify(value)}`),
  };
  if (hasIncident !== undefined && hasIncident !== null) {
    request.has_incident = hasIncident;
  }
  return request;
}

function batchOutcome(answer) {
  return {
    matched: Number(answer.matched),
    done: Number(answer.done),
    skipped: Number(answer.skipped),
    failed: Number(answer.failed),
    errors: answer.errors,
  };
}

function connect(target, options) {
  return new OrchestraClient(target, options);
}

module.exports = {
  connect,
  OrchestraClient,
  loadPackage,
  toValue,
  fromValue,
  status: grpc.status,
  DEFAULT_PROTO_DIR,
};
