//! Languages a `code` request may name: where the code is written inside the sandbox and
//! how it is run. Interpreters are found on the image's PATH.

pub struct Language {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub file: &'static str,
    pub argv: &'static [&'static str],
}

pub const LANGUAGES: &[Language] = &[
    Language {
        name: "python",
        aliases: &["python3", "py"],
        file: "/tmp/code/main.py",
        argv: &["python3", "/tmp/code/main.py"],
    },
    Language {
        name: "javascript",
        aliases: &["js", "node", "nodejs"],
        file: "/tmp/code/main.js",
        argv: &["node", "/tmp/code/main.js"],
    },
    Language {
        name: "bash",
        aliases: &[],
        file: "/tmp/code/main.sh",
        argv: &["bash", "/tmp/code/main.sh"],
    },
    Language {
        name: "sh",
        aliases: &["shell"],
        file: "/tmp/code/main.sh",
        argv: &["sh", "/tmp/code/main.sh"],
    },
];

pub fn find(name: &str) -> Option<&'static Language> {
    let name = name.to_ascii_lowercase();
    LANGUAGES.iter().find(|l| l.name == name || l.aliases.contains(&name.as_str()))
}

pub fn names() -> String {
    LANGUAGES.iter().map(|l| l.name).collect::<Vec<_>>().join(", ")
}
