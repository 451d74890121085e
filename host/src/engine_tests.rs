//! Tests of the engine: what it refuses to load, and how it weighs instances.

use super::*;

/// A component instantiating a module of one memory `memories` times
/// and one of one table `tables` times.
fn component_of(engine: &Engine, memories: u32, tables: u32) -> Component {
    use wasm_encoder as enc;
    let mut with_memory = enc::Module::new();
    let mut section = enc::MemorySection::new();
    section.memory(enc::MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    with_memory.section(&section);
    let mut with_table = enc::Module::new();
    let mut section = enc::TableSection::new();
    section.table(enc::TableType {
        element_type: enc::RefType::FUNCREF,
        table64: false,
        minimum: 1,
        maximum: None,
        shared: false,
    });
    with_table.section(&section);
    let mut component = enc::Component::new();
    component.section(&enc::ModuleSection(&with_memory));
    component.section(&enc::ModuleSection(&with_table));
    let mut instances = enc::InstanceSection::new();
    let none = || Vec::<(&str, enc::ModuleArg)>::new();
    for _ in 0..memories {
        instances.instantiate(0, none());
    }
    for _ in 0..tables {
        instances.instantiate(1, none());
    }
    component.section(&instances);
    Component::new(engine, component.finish()).unwrap()
}

#[test]
fn components_with_more_memories_or_tables_than_a_slot_holds_weigh_more() {
    let engine = Engine::default();
    let weight =
        |memories, tables| HostEngine::pool_weight(&component_of(&engine, memories, tables));
    assert_eq!(weight(0, 0), 1);
    assert_eq!(weight(2, 4), 1);
    assert_eq!(weight(3, 0), 2);
    assert_eq!(weight(1, 9), 3);
    assert_eq!(weight(8, 32), 8);
}

#[test]
fn refuses_non_components() {
    let e = check_is_component(b"hello world").unwrap_err();
    assert!(e.to_string().contains("not a WebAssembly file"));
    let e = check_is_component(b"\0asm\x01\0\0\0").unwrap_err();
    assert!(e.to_string().contains("core WebAssembly module"));
    assert!(check_is_component(b"\0asm\x0d\0\x01\0").is_ok());
}

/// An app's allowance outlives its versions for a while: a tenant that
/// removes its manifest and puts it back gets the same allowance (its
/// places taken, its rates used), not a fresh one beside it.
#[tokio::test]
async fn an_apps_allowance_outlives_its_last_version_for_a_while() {
    let cache = tempfile::tempdir().unwrap();
    let engine = HostEngine::new(EngineSettings {
        max_instances: 4,
        cache_dir: cache.path().to_path_buf(),
        ..EngineSettings::default()
    })
    .unwrap();
    let mut host = crate::config::HostConfig::default();
    host.app_limits.max_instances = Some(4);
    let make = || crate::rate::AppAllowance::new(&host, 4);
    let dir = Path::new("/state/shop");
    let first = engine.app_allowance(dir, make);
    let taken = first.try_instance_permit(1).unwrap();
    // A version dropped: kept.
    engine.keep_allowance_a_while(&first);
    let weak = Arc::downgrade(&first);
    drop(first);
    let again = engine.app_allowance(dir, make);
    assert!(
        std::ptr::eq(weak.as_ptr(), Arc::as_ptr(&again)),
        "the same allowance"
    );
    assert_eq!(
        again.instances.available_permits(),
        3,
        "its place still taken"
    );
    drop(taken);
    // Another app's is its own.
    let other = engine.app_allowance(Path::new("/state/blog"), make);
    assert!(!Arc::ptr_eq(&other, &again));
}
