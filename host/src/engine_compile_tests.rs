//! Tests of the tenants' compile turns.

use super::*;

const LONG: Duration = Duration::from_secs(60);

/// Whether `future` is still pending after the runtime had time to run
/// everything else.
async fn still_waiting<F: std::future::Future + Unpin>(future: &mut F) -> bool {
    tokio::time::timeout(Duration::from_millis(50), future)
        .await
        .is_err()
}

/// `future`'s output, failing the test rather than hanging it.
async fn soon<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("done within 10 s")
}

#[tokio::test]
async fn one_compile_per_tenant_at_a_time_and_other_tenants_go_on() {
    let turns = CompileTurns::default();
    let tenant = Path::new("/srv/tenants/a");
    let first = soon(turns.take(tenant, LONG)).await;
    let mut second = Box::pin(turns.take(tenant, LONG));
    assert!(
        still_waiting(&mut second).await,
        "a tenant's second compile waits for its first"
    );
    let other = soon(turns.take(Path::new("/srv/tenants/b"), LONG)).await;
    assert!(other.is_some(), "another tenant is not held up");
    drop(other);
    drop(first);
    let second = soon(second).await;
    assert!(second.is_some());
    // The turn went to `second`, which holds it as `first` did.
    let mut third = Box::pin(turns.take(tenant, LONG));
    assert!(
        still_waiting(&mut third).await,
        "the turn handed over is still one"
    );
    drop(second);
    drop(soon(third).await);
    assert_eq!(
        turns.tenants_waiting_or_running(),
        0,
        "a tenant with nothing running or waiting leaves no entry"
    );
}

#[tokio::test]
async fn a_load_given_up_while_waiting_holds_no_turn() {
    let turns = CompileTurns::default();
    let tenant = Path::new("/a");
    let first = soon(turns.take(tenant, LONG)).await;
    let mut abandoned = Box::pin(turns.take(tenant, LONG));
    assert!(still_waiting(&mut abandoned).await);
    drop(abandoned);
    drop(first);
    let next = soon(turns.take(tenant, LONG)).await;
    assert!(next.is_some(), "the tenant's turn came back to it");
    drop(next);
    assert_eq!(turns.tenants_waiting_or_running(), 0);
}

#[tokio::test]
async fn the_last_waiter_given_up_removes_its_tenant() {
    let turns = CompileTurns::default();
    let tenant = Path::new("/a");
    let first = soon(turns.take(tenant, LONG)).await;
    let mut abandoned = Box::pin(turns.take(tenant, LONG));
    assert!(still_waiting(&mut abandoned).await);
    // The running compile ends first, then its waiter is given up.
    drop(first);
    drop(abandoned);
    assert_eq!(turns.tenants_waiting_or_running(), 0);
}

#[tokio::test]
async fn a_tenant_busy_past_the_wait_is_refused() {
    let turns = CompileTurns::default();
    let tenant = Path::new("/a");
    let running = soon(turns.take(tenant, LONG)).await;
    let refused = turns.take(tenant, Duration::from_millis(20)).await;
    assert!(refused.is_none(), "refused while the earlier compile runs");
    drop(running);
    let taken = soon(turns.take(tenant, Duration::from_millis(20))).await;
    assert!(taken.is_some());
    drop(taken);
    assert_eq!(turns.tenants_waiting_or_running(), 0);
}

/// A component holding one core function of `ops` additions: the larger,
/// the longer its compile (one function, so on one thread).
fn component_with_ops(ops: u32) -> Vec<u8> {
    use wasm_encoder as enc;
    let mut types = enc::TypeSection::new();
    types
        .ty()
        .function([enc::ValType::I32], [enc::ValType::I32]);
    let mut functions = enc::FunctionSection::new();
    functions.function(0);
    let mut body = enc::Function::new([(1, enc::ValType::I32)]);
    for i in 0..ops {
        body.instruction(&enc::Instruction::LocalGet(i % 2))
            .instruction(&enc::Instruction::LocalGet(0))
            .instruction(&enc::Instruction::I32Add)
            .instruction(&enc::Instruction::LocalSet(1 - i % 2));
    }
    body.instruction(&enc::Instruction::LocalGet(1))
        .instruction(&enc::Instruction::End);
    let mut code = enc::CodeSection::new();
    code.function(&body);
    let mut module = enc::Module::new();
    module.section(&types).section(&functions).section(&code);
    let mut component = enc::Component::new();
    component.section(&enc::ModuleSection(&module));
    component.finish()
}

/// A tenant's compile abandoned past its deadline keeps the tenant's
/// turn while its thread runs: the tenant's next new component is refused
/// (not marked too slow) instead of compiled beside it, and loads once
/// the abandoned compile is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_compile_keeps_its_tenants_turn_until_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = dir.path().join("tenant");
    std::fs::create_dir(&tenant).unwrap();
    let engine = HostEngine::new(super::super::EngineSettings {
        max_instances: 4,
        cache_dir: dir.path().join("cache"),
        // Room for the small components to compile on a loaded machine
        // (the other tests compile too); the slow one takes seconds.
        max_compile_time: Duration::from_millis(1500),
        ..Default::default()
    })
    .unwrap();
    let slow = tenant.join("slow.wasm");
    std::fs::write(&slow, component_with_ops(800_000)).unwrap();
    let small = tenant.join("small.wasm");
    std::fs::write(&small, component_with_ops(1)).unwrap();

    let began = Instant::now();
    let e = engine
        .load_component_within(&slow, Some(&tenant))
        .await
        .expect_err("the slow component is refused past its deadline");
    assert!(e.to_string().contains("took longer than"), "{e:#}");
    let e = engine
        .load_component_within(&small, Some(&tenant))
        .await
        .expect_err("refused while the abandoned compile runs");
    assert!(
        e.to_string().contains("previous compile") && e.to_string().contains("still running"),
        "{e:#}"
    );
    // The slow compile must still have been running for the refusal to
    // mean anything: it outlived its deadline.
    let turns = &engine.inner.compile_turns;
    assert_eq!(
        turns.tenants_waiting_or_running(),
        1,
        "still compiling after {:?}; make the slow component larger",
        began.elapsed()
    );
    // Another tenant compiles meanwhile.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    // Bytes of its own: a load of `small` later must compile it, not
    // take what this tenant compiled.
    std::fs::write(other.join("small.wasm"), component_with_ops(2)).unwrap();
    engine
        .load_component_within(&other.join("small.wasm"), Some(&other))
        .await
        .expect("another tenant is not held up");
    let deadline = Instant::now() + LONG;
    while turns.tenants_waiting_or_running() > 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned compile never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    engine
        .load_component_within(&small, Some(&tenant))
        .await
        .expect("not marked too slow: loads once the tenant's turn is back");
    let e = engine
        .load_component_within(&slow, Some(&tenant))
        .await
        .expect_err("the too slow component stays refused");
    assert!(
        e.to_string().contains("refused without compiling it again"),
        "{e:#}"
    );
}
