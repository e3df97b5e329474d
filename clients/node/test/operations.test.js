'use strict';
// Drives the operations API of a running `orchestra serve` through the Node client.
//
// Needs, besides what client.test.js needs, an operator's credentials:
//   ORCHESTRA_OPERATOR_CLIENT_ID      a consumer of the same tenant whose role holds
//   ORCHESTRA_OPERATOR_CLIENT_SECRET  'access orchestra api', 'operate orchestra' and
//                                     'deploy orchestra definitions'
// tests/integration/test_node_client.py sets all of this up.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { after, before, describe, test } = require('node:test');

const { connect, status } = require('../orchestra-client');

function requiredEnv(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set (see the header of this file)`);
  }
  return value;
}

const target = requiredEnv('ORCHESTRA_GRPC_TARGET');
const consumerId = requiredEnv('ORCHESTRA_CLIENT_ID');
const consumerSecret = requiredEnv('ORCHESTRA_CLIENT_SECRET');
const operatorId = requiredEnv('ORCHESTRA_OPERATOR_CLIENT_ID');
const operatorSecret = requiredEnv('ORCHESTRA_OPERATOR_CLIENT_SECRET');

// A unique id per run, so the listings below see only this run's instances.
const DEFINITION = `fragile_${crypto.randomUUID().replaceAll('-', '').slice(0, 12)}`;
// Moving on from `task` needs `approved`: a signal without it is a condition_failed incident.
const SOURCE = JSON.stringify({
  id: DEFINITION,
  label: 'Needs approval',
  nodes: { s: { type: 'start' }, task: { type: 'wait' }, e: { type: 'end' } },
  flows: [
    { from: 's', to: 'task' },
    { from: 'task', to: 'e', when: 'approved' },
  ],
});

async function rejectsWith(promise, code) {
  await assert.rejects(promise, (error) => {
    assert.equal(error.code, code, `expected gRPC status ${code}, got ${error.code}: ${error.details}`);
    return true;
  });
}

describe('the operations API through the node client', () => {
  let operator;
  let consumer;

  before(async () => {
    operator = connect(target, { deadlineMs: 10_000 });
    await operator.login(operatorId, operatorSecret);
    consumer = connect(target, { deadlineMs: 10_000 });
    await consumer.login(consumerId, consumerSecret);
  });

  after(() => {
    operator.close();
    consumer.close();
  });

  async function incidentInstance(variables = {}) {
    const instanceId = await operator.startProcess(DEFINITION, variables);
    const [token] = (await operator.getInstance(instanceId)).tokens;
    await operator.signalToken(token.id);
    // The signal consumed the parked token; the one in incident is new.
    const [stuck] = (await operator.getInstance(instanceId)).tokens;
    assert.equal(stuck.status, 'incident');
    return { instanceId, tokenId: stuck.id };
  }

  test('deploys a definition once, then finds it unchanged', async () => {
    const first = await operator.deployDefinition(SOURCE);
    assert.deepEqual(first, { definition_id: DEFINITION, version: 1, changed: true, scope: 'tenant' });
    const again = await operator.deployDefinition(SOURCE);
    assert.equal(again.changed, false);
    assert.equal(again.version, 1);
  });

  test('refuses an invalid definition with INVALID_ARGUMENT', async () => {
    await rejectsWith(operator.deployDefinition('id: broken\nnodes: {}\nflows: []\n'), status.INVALID_ARGUMENT);
  });

  test('an incident is listed, shown and counted, then retried with variables', async () => {
    const { instanceId, tokenId } = await incidentInstance({ amount: 3 });

    const incidents = await operator.listIncidents({ definitionId: DEFINITION });
    const listed = incidents.incidents.find((i) => i.token_id === tokenId);
    assert.ok(listed, 'the incident is listed');
    assert.equal(listed.instance_id, instanceId);
    assert.equal(listed.node_id, 'task');
    assert.equal(listed.kind, 'condition_failed');
    assert.match(listed.reason, /approved/);
    assert.ok(listed.since instanceof Date);

    const detail = await operator.getInstanceDetail(instanceId);
    assert.equal(detail.status, 'running');
    assert.equal(detail.definition_version, 1);
    assert.equal(detail.ended_at, null);
    assert.deepEqual(detail.variables, { amount: 3 });
    assert.equal(detail.tokens.length, 1);
    assert.equal(detail.tokens[0].incident_kind, 'condition_failed');
    assert.match(detail.tokens[0].incident_reason, /approved/);

    const graph = await operator.getDefinition(DEFINITION);
    assert.equal(graph.label, 'Needs approval');
    const task = graph.nodes.find((n) => n.id === 'task');
    assert.ok(task.tokens.incident >= 1);
    assert.deepEqual(
      graph.flows.map((f) => [f.from_node, f.to_node, f.condition]),
      [
        ['s', 'task', ''],
        ['task', 'e', 'approved'],
      ],
    );

    const found = await operator.searchInstances({ definitionId: DEFINITION, hasIncident: true, variables: { amount: 3 } });
    assert.ok(found.instances.some((i) => i.id === instanceId && i.open_incidents === 1));

    assert.equal(await operator.resolveIncident(tokenId, 'retry', { approved: true }), 'completed');
    const done = await operator.getInstanceDetail(instanceId);
    assert.equal(done.status, 'completed');
    assert.ok(done.ended_at instanceof Date);

    const history = await operator.getInstanceHistory(instanceId);
    const actions = history.entries.map((e) => e.action);
    assert.deepEqual(actions.slice(-1), ['incident.retry']);
    assert.equal(history.entries.at(-1).actor, operatorId);
    assert.deepEqual(history.entries.at(-1).variables, ['approved']);

    await rejectsWith(operator.resolveIncident(tokenId, 'retry'), status.FAILED_PRECONDITION);
  });

  test('cancel_branch ends an instance whose only token was in incident', async () => {
    const { instanceId, tokenId } = await incidentInstance();
    await rejectsWith(operator.resolveIncident(tokenId, 'undo'), status.INVALID_ARGUMENT);
    assert.equal(await operator.resolveIncident(tokenId, 'cancel_branch'), 'completed');
    assert.equal((await operator.getInstanceDetail(instanceId)).tokens.length, 0);
  });

  test('cancels a running instance once', async () => {
    const instanceId = await operator.startProcess(DEFINITION);
    assert.equal(await operator.cancelInstance(instanceId, { reason: 'customer withdrew' }), 'cancelled');
    const detail = await operator.getInstanceDetail(instanceId);
    assert.equal(detail.status, 'cancelled');
    assert.deepEqual(detail.tokens, []);
    const history = await operator.getInstanceHistory(instanceId);
    const last = history.entries.at(-1);
    assert.equal(last.action, 'instance.cancel');
    assert.equal(last.reason, 'customer withdrew');
    await rejectsWith(operator.cancelInstance(instanceId), status.FAILED_PRECONDITION);
  });

  test('a signal sets variables in the same call', async () => {
    const instanceId = await operator.startProcess(DEFINITION);
    const [token] = (await operator.getInstance(instanceId)).tokens;
    assert.equal(await operator.signalToken(token.id, { approved: true, by: 'ann' }), 'signalled');
    const detail = await operator.getInstanceDetail(instanceId);
    assert.equal(detail.status, 'completed');
    assert.deepEqual(detail.variables, { approved: true, by: 'ann' });
  });

  test('batches count first, then act', async () => {
    await incidentInstance();
    const retryDry = await operator.retryIncidents({ definitionId: DEFINITION, dryRun: true });
    assert.ok(retryDry.matched >= 1);
    assert.equal(retryDry.done, 0);
    const running = await operator.startProcess(DEFINITION);
    const dry = await operator.cancelInstances({ definitionId: DEFINITION, dryRun: true });
    assert.ok(dry.matched >= 2);
    assert.equal(dry.done, 0);
    const done = await operator.cancelInstances({ definitionId: DEFINITION, reason: 'clean-up' });
    // The two running ones are cancelled; instances already ended are passed over.
    assert.equal(done.done, 2);
    assert.equal(done.done + done.skipped, dry.matched);
    assert.equal(done.failed, 0);
    assert.equal((await operator.getInstanceDetail(running)).status, 'cancelled');
    const left = await operator.searchInstances({ definitionId: DEFINITION, status: 'running' });
    assert.deepEqual(left.instances, []);
  });

  test('lists the deployed definition with its versions', async () => {
    const definitions = await operator.listDefinitions();
    const mine = definitions.find((d) => d.definition_id === DEFINITION);
    assert.ok(mine, 'the definition is listed');
    assert.equal(mine.scope, 'tenant');
    assert.equal(mine.latest_version, 1);
    assert.equal(mine.versions.length, 1);
    assert.ok(mine.versions[0].deployed_at instanceof Date);
  });

  test('pages through a search', async () => {
    const started = [];
    for (let i = 0; i < 3; i += 1) {
      started.push(await operator.startProcess(DEFINITION, { batch: 'paging' }));
    }
    const seen = [];
    let pageToken = '';
    do {
      const page = await operator.searchInstances({ variables: { batch: 'paging' }, pageSize: 2, pageToken });
      assert.ok(page.instances.length <= 2);
      seen.push(...page.instances.map((i) => i.id));
      pageToken = page.next_page_token;
    } while (pageToken);
    assert.deepEqual(seen, started.reverse());
  });

  test('bad input is INVALID_ARGUMENT, unknown ids NOT_FOUND', async () => {
    await rejectsWith(operator.searchInstances({ status: 'sleeping' }), status.INVALID_ARGUMENT);
    await rejectsWith(operator.searchInstances({ pageSize: 5000 }), status.INVALID_ARGUMENT);
    await rejectsWith(operator.listIncidents({ pageToken: 'forged' }), status.INVALID_ARGUMENT);
    await rejectsWith(operator.getInstanceDetail(crypto.randomUUID()), status.NOT_FOUND);
    await rejectsWith(operator.getInstanceHistory(crypto.randomUUID()), status.NOT_FOUND);
    await rejectsWith(operator.cancelInstance(crypto.randomUUID()), status.NOT_FOUND);
    await rejectsWith(operator.getDefinition('no_such_definition'), status.NOT_FOUND);
  });

  test('a consumer without `operate orchestra` is PERMISSION_DENIED', async () => {
    await rejectsWith(consumer.searchInstances(), status.PERMISSION_DENIED);
    await rejectsWith(consumer.listIncidents(), status.PERMISSION_DENIED);
    await rejectsWith(consumer.deployDefinition(SOURCE), status.PERMISSION_DENIED);
  });
});
