//! Renders `docs/ports.md` from the doc comments of `wit/`, so the port
//! reference cannot drift from the WIT: the `docs` test compares the file
//! with this rendering (`BERTH_BLESS=1` rewrites it).

use std::fmt::Write as _;
use std::path::Path;

use wit_parser::{Docs, Function, FunctionKind, Handle, Resolve, Type, TypeDefKind, TypeId};

/// Renders the reference of every interface of the package in `wit_dir`.
pub fn render(wit_dir: &Path) -> anyhow::Result<String> {
    let mut resolve = Resolve::default();
    let (pkg, _) = resolve.push_dir(wit_dir)?;
    let package = &resolve.packages[pkg];
    let mut out = String::new();
    writeln!(out, "# Ports reference: `{}`\n", package.name)?;
    out.push_str(
        "Generated from the doc comments of `wit/` by `tests/src/portsdoc.rs`; do not edit by hand\n\
         (run `just docs` after changing the WIT). Limits that apply to every port are in\n\
         [manifest.md](manifest.md#limits); how errors reach guests is in the README's architecture section.\n\n\
         Every port is opened by a *logical* name that the component's manifest grants; a name that is\n\
         not granted gets the port's `not-granted` error, and a component importing a port it was not\n\
         granted at all is refused at load. Outbound HTTP is the standard `wasi:http/outgoing-handler`,\n\
         allowed per component by `grants.http`; inbound HTTP is `wasi:http/incoming-handler`.\n\n",
    );
    for (name, id) in &package.worlds {
        let world = &resolve.worlds[*id];
        writeln!(out, "- world `{name}`: {}", flat(&world.docs))?;
    }
    out.push('\n');
    for (name, id) in &package.interfaces {
        let iface = &resolve.interfaces[*id];
        writeln!(out, "## `{name}`\n")?;
        docs(&mut out, &iface.docs);
        for ty in iface.types.values() {
            type_def(&mut out, &resolve, *ty)?;
        }
        let free: Vec<&Function> = iface
            .functions
            .values()
            .filter(|f| matches!(f.kind, FunctionKind::Freestanding))
            .collect();
        if !free.is_empty() {
            writeln!(out, "### Functions\n")?;
            for f in free {
                function(&mut out, &resolve, f)?;
            }
        }
        for ty in iface.types.values() {
            if !matches!(resolve.types[*ty].kind, TypeDefKind::Resource) {
                continue;
            }
            let methods: Vec<&Function> = iface
                .functions
                .values()
                .filter(|f| matches!(f.kind, FunctionKind::Method(t) | FunctionKind::Static(t) | FunctionKind::Constructor(t) if t == *ty))
                .collect();
            writeln!(
                out,
                "#### Methods of `{}`\n",
                resolve.types[*ty].name.as_deref().unwrap_or("?")
            )?;
            for f in methods {
                function(&mut out, &resolve, f)?;
            }
        }
    }
    Ok(out)
}

fn docs(out: &mut String, d: &Docs) {
    if let Some(text) = &d.contents {
        out.push_str(text.trim_end());
        out.push_str("\n\n");
    }
}

fn type_def(out: &mut String, resolve: &Resolve, id: TypeId) -> anyhow::Result<()> {
    let def = &resolve.types[id];
    let name = def.name.as_deref().unwrap_or("?");
    match &def.kind {
        TypeDefKind::Record(r) => {
            writeln!(out, "### record `{name}`\n")?;
            docs(out, &def.docs);
            for f in &r.fields {
                writeln!(
                    out,
                    "- `{}: {}`: {}",
                    f.name,
                    ty(resolve, &f.ty),
                    flat(&f.docs)
                )?;
            }
            out.push('\n');
        }
        TypeDefKind::Variant(v) => {
            writeln!(out, "### variant `{name}`\n")?;
            docs(out, &def.docs);
            for c in &v.cases {
                let payload =
                    c.ty.as_ref()
                        .map(|t| format!("({})", ty(resolve, t)))
                        .unwrap_or_default();
                writeln!(out, "- `{}{payload}`: {}", c.name, flat(&c.docs))?;
            }
            out.push('\n');
        }
        TypeDefKind::Enum(e) => {
            writeln!(out, "### enum `{name}`\n")?;
            docs(out, &def.docs);
            for c in &e.cases {
                writeln!(out, "- `{}`: {}", c.name, flat(&c.docs))?;
            }
            out.push('\n');
        }
        TypeDefKind::Resource => {
            writeln!(out, "### resource `{name}`\n")?;
            docs(out, &def.docs);
        }
        TypeDefKind::Type(t) => {
            writeln!(out, "### type `{name}` = `{}`\n", ty(resolve, t))?;
            docs(out, &def.docs);
        }
        _ => {}
    }
    Ok(())
}

fn flat(d: &Docs) -> String {
    d.contents
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn function(out: &mut String, resolve: &Resolve, f: &Function) -> anyhow::Result<()> {
    let params: Vec<String> = f
        .params
        .iter()
        .filter(|p| p.name != "self")
        .map(|p| format!("{}: {}", p.name, ty(resolve, &p.ty)))
        .collect();
    let result = f
        .result
        .as_ref()
        .map(|t| format!(" -> {}", ty(resolve, t)))
        .unwrap_or_default();
    let kind = if matches!(f.kind, FunctionKind::Static(_)) {
        "static "
    } else {
        ""
    };
    writeln!(
        out,
        "##### `{kind}{}({}){result}`\n",
        f.item_name(),
        params.join(", ")
    )?;
    docs(out, &f.docs);
    Ok(())
}

fn ty(resolve: &Resolve, t: &Type) -> String {
    match t {
        Type::Bool => "bool".into(),
        Type::U8 => "u8".into(),
        Type::U16 => "u16".into(),
        Type::U32 => "u32".into(),
        Type::U64 => "u64".into(),
        Type::S8 => "s8".into(),
        Type::S16 => "s16".into(),
        Type::S32 => "s32".into(),
        Type::S64 => "s64".into(),
        Type::F32 => "f32".into(),
        Type::F64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::ErrorContext => "error-context".into(),
        Type::Id(id) => {
            let def = &resolve.types[*id];
            if let Some(name) = &def.name {
                return name.clone();
            }
            match &def.kind {
                TypeDefKind::List(t) => format!("list<{}>", ty(resolve, t)),
                TypeDefKind::Option(t) => format!("option<{}>", ty(resolve, t)),
                TypeDefKind::Tuple(tt) => format!(
                    "tuple<{}>",
                    tt.types
                        .iter()
                        .map(|t| ty(resolve, t))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                TypeDefKind::Result(r) => {
                    let ok =
                        r.ok.as_ref()
                            .map(|t| ty(resolve, t))
                            .unwrap_or_else(|| "_".into());
                    match &r.err {
                        Some(e) => format!("result<{ok}, {}>", ty(resolve, e)),
                        None => format!("result<{ok}>"),
                    }
                }
                TypeDefKind::Handle(Handle::Own(id)) => {
                    resolve.types[*id].name.clone().unwrap_or_default()
                }
                TypeDefKind::Handle(Handle::Borrow(id)) => format!(
                    "borrow<{}>",
                    resolve.types[*id].name.clone().unwrap_or_default()
                ),
                TypeDefKind::Type(t) => ty(resolve, t),
                other => other.as_str().to_string(),
            }
        }
    }
}
