//! The documentation is held to the code and to itself: the configuration tables list
//! exactly the flags (and environment variables) of `samserve` and `samserve embed`; the
//! README is short, says what a newcomer needs on its first screen, and links every page of
//! docs/; every relative link in the README and docs/ points at a file (and heading) that
//! exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use samserve::config::embed::EmbedArgs;
use samserve::config::Config;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// (flag, env) of each row of the first table under `heading` in a markdown text.
fn table_rows(text: &str, heading: &str) -> Vec<(String, Option<String>)> {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("no heading {heading}"));
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text[start..].lines().skip(1) {
        if line.starts_with('#') {
            break;
        }
        if !line.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        in_table = true;
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Some(flag) = cells[1]
            .strip_prefix("`--")
            .map(|f| f.split(['`', ' ']).next().unwrap().to_string())
        else {
            continue; // header and separator rows
        };
        let env = cells[2]
            .strip_prefix('`')
            .map(|e| e.split('`').next().unwrap().to_string());
        rows.push((flag, env));
    }
    assert!(!rows.is_empty(), "no rows under {heading}");
    rows
}

/// (long flag, env) of every option of a clap command (help and version aside).
fn command_flags(cmd: clap::Command) -> Vec<(String, Option<String>)> {
    cmd.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?.to_string();
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            Some((long, env))
        })
        .filter(|(l, _)| l != "help" && l != "version")
        .collect()
}

fn assert_same(
    doc: Vec<(String, Option<String>)>,
    code: Vec<(String, Option<String>)>,
    what: &str,
) {
    let doc_set: BTreeSet<_> = doc.iter().cloned().collect();
    let code_set: BTreeSet<_> = code.iter().cloned().collect();
    assert_eq!(doc.len(), doc_set.len(), "{what}: a flag is listed twice");
    let missing: Vec<_> = code_set.difference(&doc_set).collect();
    let extra: Vec<_> = doc_set.difference(&code_set).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: flags in --help but not in the table: {missing:?}; in the table but not in \
         --help (or with another variable): {extra:?}"
    );
}

#[test]
fn the_configuration_table_lists_exactly_the_server_flags() {
    let doc = read("docs/configuration.md");
    assert_same(
        table_rows(&doc, "## Server flags"),
        command_flags(Config::command()),
        "docs/configuration.md, server flags",
    );
    // --help itself names every one of them (nothing hidden).
    let help = Config::command().render_long_help().to_string();
    for (flag, _) in table_rows(&doc, "## Server flags") {
        assert!(help.contains(&format!("--{flag}")), "--help lacks --{flag}");
    }
}

#[test]
fn the_embed_table_lists_exactly_the_embed_flags() {
    let doc = read("docs/configuration.md");
    assert_same(
        table_rows(&doc, "## `samserve embed` flags"),
        command_flags(EmbedArgs::command()),
        "docs/configuration.md, samserve embed flags",
    );
}

#[test]
fn the_readme_is_short_and_its_first_screen_has_what_a_newcomer_needs() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(lines < 350, "README.md has {lines} lines");
    // The first screen: what it is, the demo-model warning and how to serve a real model,
    // the two commands and a first request.
    let first: String = readme.lines().take(45).collect::<Vec<_>>().join("\n");
    for needed in [
        "Segment Anything",
        "demo",
        "synthetic scenes",
        "photographs",
        "make model MODEL=vit_b",
        "make run",
        "make test",
        "curl -s --data-binary @",
        "/segment",
    ] {
        assert!(
            first.contains(needed),
            "the README's first 45 lines lack {needed:?}"
        );
    }
}

fn docs_pages() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    pages.sort();
    pages
}

#[test]
fn every_docs_page_is_linked_from_the_readme() {
    let readme = read("README.md");
    let pages = docs_pages();
    assert!(pages.len() >= 8, "{pages:?}");
    for p in pages {
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(
            readme.contains(&format!("](docs/{name})")),
            "README.md does not link docs/{name}"
        );
    }
}

/// GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// Targets of `[text](target)` links outside code blocks.
fn links(markdown: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let tail = &rest[i + 2..];
            let end = tail.find(')').unwrap_or(tail.len());
            out.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    out
}

fn check_links(file: &Path) -> usize {
    let text = std::fs::read_to_string(file).unwrap();
    let dir = file.parent().unwrap();
    let mut n = 0;
    for link in links(&text) {
        if link.starts_with("http://") || link.starts_with("https://") {
            continue;
        }
        let (path, anchor) = match link.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (link.as_str(), None),
        };
        let target = if path.is_empty() {
            file.to_path_buf()
        } else {
            dir.join(path)
        };
        assert!(
            target.exists(),
            "{}: link {link} points at a missing file",
            file.display()
        );
        if let Some(a) = anchor {
            let heads = anchors(&std::fs::read_to_string(&target).unwrap());
            assert!(
                heads.contains(a),
                "{}: link {link}: no heading #{a} in {} (has {heads:?})",
                file.display(),
                target.display()
            );
        }
        n += 1;
    }
    n
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let mut n = check_links(&repo().join("README.md"));
    for p in docs_pages() {
        n += check_links(&p);
    }
    assert!(n >= 40, "only {n} links checked");
}
