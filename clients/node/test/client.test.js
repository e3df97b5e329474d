'use strict';
// Drives a running `orchestra serve` through the Node client.
//
// Needs the service address and a consumer's credentials in the environment:
//   ORCHESTRA_GRPC_TARGET    e.g. 127.0.0.1:50051
//   ORCHESTRA_CLIENT_ID      from `orchestra consumer create --tenant default --json`
//   ORCHESTRA_CLIENT_SECRET
// and the `three_step` example deployed. tests/integration/test_node_client.py
// sets all of this up.

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
const clientId = requiredEnv('ORCHESTRA_CLIENT_ID');
const clientSecret = requiredEnv('ORCHESTRA_CLIENT_SECRET');

async function rejectsWith(promise, code) {
  await assert.rejects(promise, (error) => {
    assert.equal(error.code, code, `expected gRPC status ${code}, got ${error.code}: ${error.details}`);
    return true;
  });
}

describe('orchestra node client', () => {
  const clients = [];
  let client;

  function newClient() {
    const made = connect(target, { deadlineMs: 10_000 });
    clients.push(made);
    return made;
  }

  before(() => {
    client = newClient();
  });

  after(() => {
    for (const made of clients) {
      made.close();
    }
  });

  test('issues a bearer token for the consumer', async () => {
    const answer = await client.login(clientId, clientSecret);
    assert.equal(typeof answer.access_token, 'string');
    assert.equal(answer.access_token.split('.').length, 3, 'a compact JWT');
    assert.equal(answer.token_type.toLowerCase(), 'bearer');
    assert.ok(Number.isInteger(answer.expires_in) && answer.expires_in > 0);
    assert.equal(client.accessToken, answer.access_token);
  });

  test('refuses a wrong secret with UNAUTHENTICATED', async () => {
    await rejectsWith(newClient().issueToken(clientId, `${clientSecret}x`), status.UNAUTHENTICATED);
  });

  describe('a three_step instance from start to end', () => {
    const variables = {
      amount: 1234.5,
      count: 7,
      title: 'Quarterly review \u00e9\u4e2d',
      details: { owner: { name: 'Ada', tags: ['a', 'b'] }, approved: false, note: null, levels: [1, [2, 3]] },
    };
    let instanceId;
    let tokenId;

    before(async () => {
      assert.ok(client.accessToken, 'the token test ran first');
    });

    test('starts the process', async () => {
      instanceId = await client.startProcess('three_step', variables);
      assert.equal(typeof instanceId, 'string');
      assert.ok(instanceId.length > 0);
    });

    test('the instance is running with one token parked on the task', async () => {
      const instance = await client.getInstance(instanceId);
      assert.equal(instance.id, instanceId);
      assert.equal(instance.definition_id, 'three_step');
      assert.equal(instance.status, 'running');
      assert.equal(instance.tenant_id, 'default');
      assert.equal(instance.tokens.length, 1);
      assert.equal(instance.tokens[0].node_id, 'task');
      assert.equal(instance.tokens[0].status, 'parked');
      tokenId = instance.tokens[0].id;
    });

    test('the variables read back equal to what was sent', async () => {
      assert.deepEqual(await client.getVariables(instanceId), variables);
    });

    test('sets a variable', async () => {
      assert.equal(await client.setVariable(instanceId, 'reviewer', { id: 42, roles: ['lead'] }), 'set');
      const read = await client.getVariables(instanceId);
      assert.deepEqual(read.reviewer, { id: 42, roles: ['lead'] });
      assert.equal(read.amount, variables.amount);
    });

    test('lists the instance among the running three_step instances', async () => {
      const page = await client.listInstances({ definitionId: 'three_step', status: 'running', pageSize: 1000 });
      assert.ok(
        page.instances.some((s) => s.id === instanceId && s.status === 'running'),
        `instance ${instanceId} is listed`,
      );
    });

    test('signalling the token completes the instance', async () => {
      assert.equal(await client.signalToken(tokenId), 'signalled');
      const instance = await client.getInstance(instanceId);
      assert.equal(instance.status, 'completed');
      assert.deepEqual(instance.tokens, []);
    });

    test('signalling the consumed token again is FAILED_PRECONDITION', async () => {
      await rejectsWith(client.signalToken(tokenId), status.FAILED_PRECONDITION);
    });
  });

  test('a repeated start with the same idempotency key answers the same instance', async () => {
    const idempotencyKey = crypto.randomUUID();
    const first = await client.startProcess('three_step', { n: 1 }, { idempotencyKey });
    const second = await client.startProcess('three_step', { n: 1 }, { idempotencyKey });
    assert.equal(second, first);
    const other = await client.startProcess('three_step', { n: 1 });
    assert.notEqual(other, first);
  });

  test('an unknown instance is NOT_FOUND', async () => {
    await rejectsWith(client.getInstance(`missing-${crypto.randomUUID()}`), status.NOT_FOUND);
  });

  test('an unknown definition is FAILED_PRECONDITION', async () => {
    await rejectsWith(client.startProcess('no_such_definition', {}), status.FAILED_PRECONDITION);
  });

  test('a call without a token is UNAUTHENTICATED', async () => {
    const anonymous = newClient();
    assert.equal(anonymous.accessToken, null);
    await rejectsWith(anonymous.listInstances(), status.UNAUTHENTICATED);
  });

  test('a token the service refuses is replaced by logging in again', async () => {
    const renewing = newClient();
    await renewing.login(clientId, clientSecret);
    renewing.accessToken = 'not.a.token';
    const page = await renewing.listInstances();
    assert.ok(Array.isArray(page.instances));
    assert.equal(renewing.accessToken.split('.').length, 3, 'a new compact JWT');
  });

  test('a token about to expire is renewed before the call', async () => {
    const renewing = newClient();
    await renewing.login(clientId, clientSecret);
    const first = renewing.accessToken;
    renewing.tokenExpiresAt = Date.now() + 1_000; // inside the renewal margin
    await renewing.listInstances();
    assert.notEqual(renewing.accessToken, first);
    assert.ok(renewing.tokenExpiresAt > Date.now() + 60_000, 'the new token runs for its full lifetime');
  });

  test('a malformed token is UNAUTHENTICATED', async () => {
    const forged = newClient();
    forged.accessToken = 'not.a.token';
    await rejectsWith(forged.getVariables('anything'), status.UNAUTHENTICATED);
  });
});
