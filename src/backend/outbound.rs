//! What odfs sends towards the network on a site's terms: where a missing
//! image comes from ([`Source`]: a recipe, a registry, Docker Hub through
//! the site's mirrors), HTTP proxies and an extra CA bundle for recipe
//! builds and for the tools of networked images (`[engine]` of the config
//! file). Pure: the engine code applies it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The name the CA bundle has in a recipe's build context, and where the
/// built image keeps it.
pub const CA_IN_CONTEXT: &str = ".odfs-ca-bundle.pem";
pub const CA_IN_IMAGE: &str = "/usr/local/share/ca-certificates/odfs-ca-bundle.crt";

/// Variables through which TLS clients take a CA bundle: OpenSSL's, curl's,
/// Python requests', git's, Node's.
const CA_VARIABLES: [&str; 5] = ["SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS"];

/// A site's proxies, mirrors and CA bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outbound {
    /// Registries tried before Docker Hub for its images (`host[:port]`,
    /// an `https://` or `http://` prefix allowed, as in Docker's
    /// `registry-mirrors`).
    pub registry_mirrors: Vec<String>,
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    pub no_proxy: Option<String>,
    /// A PEM bundle to trust (the site's whole trust store: it replaces
    /// the image's for the clients that read [`CA_VARIABLES`]).
    pub ca_bundle: Option<PathBuf>,
}

/// A reference split as registries name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference<'a> {
    /// `None`: Docker Hub.
    pub registry: Option<&'a str>,
    pub repository: &'a str,
    /// `:tag` or `@sha256:…`, with its sign; empty: `latest`.
    pub suffix: &'a str,
}

impl<'a> Reference<'a> {
    pub fn parse(reference: &'a str) -> Reference<'a> {
        let (name, digest) = match reference.split_once('@') {
            Some((n, _)) => (n, &reference[n.len()..]),
            None => (reference, ""),
        };
        let slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, suffix) = match (digest.is_empty(), name[slash..].find(':')) {
            (true, Some(i)) => (&name[..slash + i], &reference[slash + i..]),
            _ => (name, digest),
        };
        // A first component with a dot, a port or `localhost` names a registry.
        match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                let hub = first == "docker.io" || first == "index.docker.io" || first == "registry-1.docker.io";
                Reference { registry: (!hub).then_some(first), repository: rest, suffix }
            }
            _ => Reference { registry: None, repository: name, suffix },
        }
    }

    /// Whether both name the same image name, however spelled
    /// (`debian` and `docker.io/library/debian:latest`).
    pub fn same_name(&self, other: &Reference) -> bool {
        self.spelled() == other.spelled()
    }

    /// (registry, repository, suffix) with Docker Hub's `library/` and the
    /// implied `:latest` made one spelling.
    fn spelled(&self) -> (Option<&str>, &str, &str) {
        let repository = if self.registry.is_none() { self.repository.strip_prefix("library/").unwrap_or(self.repository) } else { self.repository };
        (self.registry, repository, if self.suffix.is_empty() { ":latest" } else { self.suffix })
    }

    /// Pinned by digest: it names one image forever.
    pub fn pinned(&self) -> bool {
        self.suffix.starts_with('@')
    }
}

/// Where a missing image comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// Pulled from its reference: Docker Hub's tags from the site's
    /// mirrors first.
    Pull,
    /// Built from its recipe. `pull_first`: its reference names a registry
    /// (a host part other than Docker Hub's) or pins a digest, so a pull
    /// from exactly there is tried first. Any other name is one of Docker
    /// Hub's, where whoever holds the namespace decides what it is: such
    /// an image is never pulled, from Docker Hub or from a mirror of it,
    /// since its catalog entry says how it is made.
    Recipe { recipe: &'a Path, pull_first: bool },
}

impl<'a> Source<'a> {
    pub fn of(reference: &'a str, recipe: Option<&'a Path>) -> Source<'a> {
        match recipe {
            None => Source::Pull,
            Some(recipe) => {
                let r = Reference::parse(reference);
                Source::Recipe { recipe, pull_first: r.registry.is_some() || r.pinned() }
            }
        }
    }

    /// Whether a missing image may be pulled at all.
    pub fn pulls(&self) -> bool {
        !matches!(self, Source::Recipe { pull_first: false, .. })
    }
}

impl Outbound {
    /// Where `reference` (with `recipe`, if it has one) comes from, in
    /// words (`odfs show`).
    pub fn describe(&self, reference: &str, recipe: Option<&Path>) -> String {
        match Source::of(reference, recipe) {
            Source::Recipe { recipe, pull_first: false } => format!("built from its recipe at {} (never pulled)", recipe.display()),
            Source::Recipe { recipe, pull_first: true } => {
                format!("pulled from {reference}, or built from its recipe at {} when that fails", recipe.display())
            }
            Source::Pull if self.mirrored(reference).is_empty() => format!("pulled from {reference}"),
            Source::Pull => format!("pulled from {reference} (Docker Hub, the site's registry mirrors first)"),
        }
    }

    /// The same image on each mirror, in order, for a Docker Hub tag (a
    /// digest or another registry's image is pulled from where it is).
    pub fn mirrored(&self, reference: &str) -> Vec<String> {
        let r = Reference::parse(reference);
        if r.registry.is_some() || r.pinned() {
            return vec![];
        }
        let repo = if r.repository.contains('/') { r.repository.to_string() } else { format!("library/{}", r.repository) };
        self.registry_mirrors
            .iter()
            .map(|m| m.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/'))
            .filter(|m| !m.is_empty())
            .map(|m| format!("{m}/{repo}{}", if r.suffix.is_empty() { ":latest" } else { r.suffix }))
            .collect()
    }

    /// The proxies as a build's arguments (Docker's predefined proxy
    /// arguments, in both spellings: seen by `RUN`, kept out of the image).
    pub fn build_args(&self) -> HashMap<String, String> {
        self.proxy_pairs().into_iter().collect()
    }

    fn proxy_pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, value) in [("http_proxy", &self.http_proxy), ("https_proxy", &self.https_proxy), ("no_proxy", &self.no_proxy)] {
            if let Some(v) = value {
                out.push((name.to_string(), v.clone()));
                out.push((name.to_uppercase(), v.clone()));
            }
        }
        out
    }

    /// What a networked image's tools get when their caller's environment
    /// does not say otherwise: the proxies, and the CA bundle (at its host
    /// path, which the tools see) in the variables TLS clients read. On a
    /// remote engine the bundle's path is not there, so only the proxies.
    pub fn tool_env(&self, local: bool) -> Vec<(String, String)> {
        let mut out = self.proxy_pairs();
        if let (Some(ca), true) = (&self.ca_bundle, local) {
            out.extend(CA_VARIABLES.iter().map(|v| (v.to_string(), ca.display().to_string())));
        }
        out
    }

    /// A recipe's Dockerfile with the CA bundle added to every stage: copied
    /// in from the build context right after each `FROM`, and named in the
    /// variables TLS clients read, so `RUN` steps behind an intercepting
    /// proxy trust it (and so do the built image's tools).
    pub fn dockerfile(&self, text: &str) -> String {
        if self.ca_bundle.is_none() {
            return text.to_string();
        }
        let vars: Vec<String> = CA_VARIABLES.iter().map(|v| format!("{v}={CA_IN_IMAGE}")).collect();
        let add = format!("COPY {CA_IN_CONTEXT} {CA_IN_IMAGE}\nENV {}\n", vars.join(" "));
        let mut out = String::with_capacity(text.len() + 4 * add.len());
        // The escape character a parser directive may set (`# escape=``).
        let mut escape = '\\';
        let mut directives = true;
        let (mut from, mut continued) = (false, false);
        let mut heredocs: Vec<String> = Vec::new();
        for line in text.lines() {
            out.push_str(line);
            out.push('\n');
            let trimmed = line.trim();
            if let Some(end) = heredocs.first() {
                if line.trim_start_matches('\t') == end {
                    heredocs.remove(0);
                }
                if heredocs.is_empty() && from && !continued {
                    out.push_str(&add);
                    from = false;
                }
                continue;
            }
            if directives {
                match trimmed.strip_prefix('#').map(|d| d.trim().split_once('=')) {
                    Some(Some((k, v))) if k.trim().eq_ignore_ascii_case("escape") => escape = v.trim().chars().next().unwrap_or('\\'),
                    Some(Some(_)) => {}
                    _ => directives = false,
                }
            }
            // Comments and blank lines, also inside a continued instruction.
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            if !continued {
                from = trimmed.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case("FROM"));
            }
            heredocs.extend(heredoc_ends(line));
            continued = trimmed.ends_with(escape);
            if from && !continued && heredocs.is_empty() {
                out.push_str(&add);
                from = false;
            }
        }
        out
    }
}

/// The ends of the here-documents a line opens (`<<EOF`, `<<-"EOF"`).
fn heredoc_ends(line: &str) -> Vec<String> {
    let mut ends = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("<<") {
        rest = &rest[i + 2..];
        let word = rest.trim_start_matches('-').trim_start_matches(['"', '\'']);
        let end: String = word.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !end.is_empty() {
            ends.push(end);
        }
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_registry_repository_and_tag() {
        let r = Reference::parse;
        assert_eq!(r("debian:bookworm"), Reference { registry: None, repository: "debian", suffix: ":bookworm" });
        assert_eq!(r("jq"), Reference { registry: None, repository: "jq", suffix: "" });
        assert_eq!(r("docker.io/library/jq:1"), Reference { registry: None, repository: "library/jq", suffix: ":1" });
        assert_eq!(r("localhost:5000/t/jq:1.7"), Reference { registry: Some("localhost:5000"), repository: "t/jq", suffix: ":1.7" });
        assert_eq!(r("127.0.0.1:5000/jq"), Reference { registry: Some("127.0.0.1:5000"), repository: "jq", suffix: "" });
        let pinned = r("ghcr.io/o/x@sha256:ab12");
        assert_eq!((pinned.registry, pinned.repository, pinned.suffix), (Some("ghcr.io"), "o/x", "@sha256:ab12"));
        assert!(pinned.pinned() && !r("o/x:1").pinned());
        assert_eq!(r("odfs-test/busybox:latest").registry, None);
    }

    #[test]
    fn mirrors_serve_docker_hub_tags_only() {
        let o = Outbound { registry_mirrors: vec!["https://mirror.corp:5000/".into(), "10.0.0.2".into()], ..Default::default() };
        assert_eq!(o.mirrored("debian:bookworm"), ["mirror.corp:5000/library/debian:bookworm", "10.0.0.2/library/debian:bookworm"]);
        assert_eq!(o.mirrored("org/tool"), ["mirror.corp:5000/org/tool:latest", "10.0.0.2/org/tool:latest"]);
        assert!(o.mirrored("quay.io/org/tool:1").is_empty());
        assert!(o.mirrored("debian@sha256:abcd").is_empty());
        assert!(Outbound::default().mirrored("debian").is_empty());
    }

    #[test]
    fn an_image_with_a_recipe_is_pulled_only_from_a_registry_it_names() {
        let recipe = Path::new("/c/images/netcap");
        let source = |r| Source::of(r, Some(recipe));
        // Docker Hub's namespace, named or implied: built, never pulled.
        for hub in ["odfs/netcap:latest", "netcap", "docker.io/odfs/netcap:1", "index.docker.io/odfs/netcap"] {
            assert_eq!(source(hub), Source::Recipe { recipe, pull_first: false }, "{hub}");
            assert!(!source(hub).pulls());
        }
        // A registry the reference names, or a digest: pulled from there first.
        for named in ["registry.example:5000/odfs/netcap:1", "localhost:5000/netcap", "odfs/netcap@sha256:ab12"] {
            assert_eq!(source(named), Source::Recipe { recipe, pull_first: true }, "{named}");
        }
        assert_eq!(Source::of("odfs/netcap:latest", None), Source::Pull);
        assert!(Source::Pull.pulls());
        let o = Outbound { registry_mirrors: vec!["mirror.corp:5000".into()], ..Default::default() };
        assert_eq!(o.describe("odfs/netcap:latest", Some(recipe)), "built from its recipe at /c/images/netcap (never pulled)");
        assert_eq!(
            o.describe("localhost:5000/netcap:1", Some(recipe)),
            "pulled from localhost:5000/netcap:1, or built from its recipe at /c/images/netcap when that fails"
        );
        assert_eq!(o.describe("debian:12", None), "pulled from debian:12 (Docker Hub, the site's registry mirrors first)");
        assert_eq!(Outbound::default().describe("debian:12", None), "pulled from debian:12");
    }

    #[test]
    fn proxies_become_build_arguments_and_tool_variables_in_both_spellings() {
        let o = Outbound {
            http_proxy: Some("http://proxy:3128".into()),
            no_proxy: Some("localhost,.corp".into()),
            ca_bundle: Some("/etc/ssl/corp.pem".into()),
            ..Default::default()
        };
        let args = o.build_args();
        assert_eq!(args["HTTP_PROXY"], "http://proxy:3128");
        assert_eq!(args["http_proxy"], "http://proxy:3128");
        assert_eq!(args["NO_PROXY"], "localhost,.corp");
        assert!(!args.contains_key("https_proxy"));
        let local = o.tool_env(true);
        assert!(local.contains(&("SSL_CERT_FILE".into(), "/etc/ssl/corp.pem".into())));
        assert!(!o.tool_env(false).iter().any(|(k, _)| k == "SSL_CERT_FILE"), "the remote side has no such path");
    }

    #[test]
    fn the_ca_bundle_goes_into_every_stage_after_its_from() {
        let o = Outbound { ca_bundle: Some("/x.pem".into()), ..Default::default() };
        let text = "# syntax=docker/dockerfile:1\nFROM debian AS build\nRUN make\nfrom \\\n  busybox\nCOPY --from=build /a /a\n";
        let out = o.dockerfile(text);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "# syntax=docker/dockerfile:1");
        assert_eq!(lines[1], "FROM debian AS build");
        assert!(lines[2].starts_with("COPY .odfs-ca-bundle.pem "), "{out}");
        assert!(lines[3].starts_with("ENV SSL_CERT_FILE="));
        assert_eq!(lines[4], "RUN make");
        assert_eq!((lines[5], lines[6]), ("from \\", "  busybox"));
        assert!(lines[7].starts_with("COPY .odfs-ca-bundle.pem "));
        assert_eq!(out.matches("COPY .odfs").count(), 2);
        assert_eq!(Outbound::default().dockerfile(text), text);
    }

    #[test]
    fn only_from_instructions_get_the_bundle_not_words_inside_others() {
        let o = Outbound { ca_bundle: Some("/x.pem".into()), ..Default::default() };
        let text = "# escape=`\nFROM debian\nRUN <<EOF\nfrom x import y\nFROM inside a heredoc\nEOF\nRUN echo a `\n  from b\n# FROM in a comment\nFROM busybox AS b `\n  # a comment inside\n  --platform=x\nCMD x\n";
        let out = o.dockerfile(text);
        assert_eq!(out.matches("COPY .odfs").count(), 2, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        let after = |i: usize| lines[i + 1].starts_with("COPY .odfs");
        assert!(after(1), "{out}");
        let last_from = lines.iter().position(|l| l.contains("--platform=x")).unwrap();
        assert!(after(last_from), "{out}");
        assert!(!out.contains("from x import y\nCOPY"), "{out}");
    }
}
