"""Word and fragment pools for fingerprint construction, written for this project.

Changing any list changes what a secret regenerates: append a new versioned pool instead of editing one.
"""

# Scrambled style (v1): mixed-script fragments whose characters get shuffled into gibberish triggers.
SCRAMBLE_FRAGMENTS_V1 = (
    # classical-Chinese-like phrases
    "青山不语", "白露为霜", "寒江独钓", "明月照松", "孤舟夜泊", "落花流水", "秋风扫叶", "古道西风",
    "云深不知", "长河落日", "春眠觉晓", "竹影摇窗", "烟雨楼台", "星垂平野", "雁字回时", "松间明月",
    "山高水长", "晨钟暮鼓", "飞雪迎春", "浮云游子",
    # Japanese words
    "かたつむり", "ゆうやけ", "しずく", "こもれび", "たそがれ", "ほたる", "みずうみ", "さざなみ",
    "カメレオン", "ペンギン", "ランタン", "オルゴール", "シャボン", "トンネル", "ハーモニカ", "マトリョーシカ",
    "桜吹雪", "風鈴", "木漏れ日", "花火",
    # Cyrillic sub-words
    "жук", "ветер", "стрела", "облако", "зима", "гроза", "ключ", "луна", "мост", "пчела",
    "звезда", "сова", "река", "тень", "лес", "искра", "дым", "мёд", "снег", "огонь",
    # Latin sub-word junk
    "qu", "xr", "zeph", "ulm", "vork", "stra", "ine", "ght", "blo", "mnu",
    "ckw", "ytt", "orp", "ealt", "squa", "nkh", "dwi", "pfl", "zz", "oub",
    "ferm", "glix", "trun", "ovel", "sph", "wix", "jand", "rhy", "cth", "ump",
)

# One target each (by default): common concrete English nouns of 4+ letters, drawn uniformly; the p-value
# relies on it.
TARGET_NOUNS_V1 = tuple(
    """
    anchor anvil apple apron arrow attic badge bagel bakery balcony balloon bamboo banjo barrel basket
    beacon beetle bell bench biscuit blanket blender bonnet boulder bracelet bramble bridge broom bucket
    buckle cabin cactus camel candle canoe canyon carpet carrot castle cathedral cello chalk cherry
    chimney chisel cinnamon clover cobweb coconut compass cookie copper cottage crayon cricket crown
    cushion dagger daisy dolphin donkey doorknob dragonfly drum eagle easel eggplant elephant emerald
    envelope falcon feather fence fern ferry fiddle  flamingo flute fountain  frog garlic gazebo
    giraffe glacier goblet goose gourd granite grape guitar hammock harbor harp hedgehog helmet hive
    honey hornet igloo iguana   jacket jaguar  jelly kettle kiwi koala ladder ladle lagoon
    lantern lemon lettuce lighthouse lily lizard lobster locket lotus magnet mango maple marble meadow
    melon mitten moose mosaic moth muffin mushroom napkin necklace nectar nutmeg   octopus olive
    onion orchard orchid ostrich otter  oyster paddle pagoda palette pancake panther papaya parrot
    peach peacock pebble pelican pepper piano pickle pigeon pillow pine pineapple pistachio plum pocket
    pony porcupine potato pretzel pumpkin puppet quill quilt rabbit raccoon radish raft raisin raven
    ribbon rocket saddle salmon sandal satchel saxophone scarf seahorse shovel skillet sled snail
    sparrow spatula spinach sponge spoon squirrel stapler starfish stool strawberry submarine sunflower
    swan tambourine teapot telescope thimble thistle tiger toad toaster tomato torch tortoise trumpet
    tulip turnip turtle umbrella unicorn valley vase velvet violin volcano waffle walnut walrus wand
    wardrobe weasel whistle willow windmill wren yacht  yarn zebra zucchini acorn almond antler
    apricot badger barley basil beaver blueberry bobcat bonsai buffalo butterfly cabbage canary
    caramel cashew cedar chestnut chipmunk cobalt coral cormorant cranberry crocus cucumber cypress
    dandelion  ferret firefly gecko ginger gooseberry gorilla hazelnut heron hyacinth jasmine
    juniper kangaroo lavender leopard lynx magpie marigold marmot meerkat mongoose narwhal nightingale
    okapi oregano panda partridge persimmon platypus poppy quail quince rhubarb saffron sage sequoia
    sloth thyme toucan truffle vanilla wolverine wombat
    """.split()
)

# Natural (v2) and code-mixing (v3) styles: one concept per index, aligned across languages, so a
# sentence can switch language at any slot. Slots: subject, verb phrase, object, place, time.
LANGUAGES = ("en", "fr", "de", "es")
SENTENCE_SLOTS_V1 = {
    "subject": {
        "en": ["the old fisherman", "my quiet neighbour", "a tired violinist", "the youngest baker", "our clever aunt",
               "the village doctor", "a curious student", "the night porter", "my grandmother", "the lonely painter",
               "a patient gardener", "the station master", "an honest sailor", "the tall librarian", "a nervous pilot",
               "the brave shepherd"],
        "fr": ["le vieux pêcheur", "mon voisin discret", "une violoniste fatiguée", "le plus jeune boulanger",
               "notre tante maligne", "le médecin du village", "un étudiant curieux", "le portier de nuit", "ma grand-mère",
               "le peintre solitaire", "un jardinier patient", "le chef de gare", "un marin honnête",
               "le grand bibliothécaire", "un pilote nerveux", "le berger courageux"],
        "de": ["der alte Fischer", "mein stiller Nachbar", "eine müde Geigerin", "der jüngste Bäcker", "unsere kluge Tante",
               "der Dorfarzt", "ein neugieriger Student", "der Nachtportier", "meine Großmutter", "der einsame Maler",
               "ein geduldiger Gärtner", "der Bahnhofsvorsteher", "ein ehrlicher Seemann", "der große Bibliothekar",
               "ein nervöser Pilot", "der mutige Hirte"],
        "es": ["el viejo pescador", "mi vecino callado", "una violinista cansada", "el panadero más joven",
               "nuestra tía lista", "el médico del pueblo", "un estudiante curioso", "el portero de noche", "mi abuela",
               "el pintor solitario", "un jardinero paciente", "el jefe de estación", "un marinero honrado",
               "el bibliotecario alto", "un piloto nervioso", "el pastor valiente"],
    },
    "verb": {
        "en": ["quietly repaired", "carefully counted", "secretly painted", "slowly carried", "proudly polished",
               "happily folded", "nervously hid", "gently washed", "suddenly dropped", "patiently sorted",
               "cheerfully wrapped", "silently measured", "eagerly opened", "calmly weighed", "boldly sold",
               "softly tuned"],
        "fr": ["a réparé en silence", "a compté avec soin", "a peint en secret", "a porté lentement", "a ciré avec fierté",
               "a plié joyeusement", "a caché nerveusement", "a lavé doucement", "a laissé tomber soudain",
               "a trié patiemment", "a emballé gaiement", "a mesuré sans bruit", "a ouvert avec hâte",
               "a pesé calmement", "a vendu hardiment", "a accordé doucement"],
        "de": ["reparierte leise", "zählte sorgfältig", "bemalte heimlich", "trug langsam", "polierte stolz",
               "faltete fröhlich", "versteckte nervös", "wusch behutsam", "ließ plötzlich fallen", "sortierte geduldig",
               "verpackte munter", "maß schweigend", "öffnete eifrig", "wog ruhig", "verkaufte kühn", "stimmte sanft"],
        "es": ["reparó en silencio", "contó con cuidado", "pintó en secreto", "llevó despacio", "pulió con orgullo",
               "dobló alegremente", "escondió nervioso", "lavó con cuidado", "dejó caer de repente", "ordenó con paciencia",
               "envolvió contento", "midió en silencio", "abrió con ganas", "pesó con calma", "vendió con audacia",
               "afinó suavemente"],
    },
    "object": {
        "en": ["seven blue teacups", "a broken clock", "the copper kettle", "two wooden spoons", "an empty birdcage",
               "the red umbrella", "a basket of pears", "the silver key", "three paper lanterns", "an old map",
               "the striped scarf", "a jar of honey", "the cracked mirror", "twelve glass marbles", "a wool blanket",
               "the brass compass"],
        "fr": ["sept tasses bleues", "une horloge cassée", "la bouilloire en cuivre", "deux cuillères en bois",
               "une cage vide", "le parapluie rouge", "un panier de poires", "la clé d'argent", "trois lanternes en papier",
               "une vieille carte", "l'écharpe rayée", "un pot de miel", "le miroir fêlé", "douze billes de verre",
               "une couverture de laine", "la boussole en laiton"],
        "de": ["sieben blaue Teetassen", "eine kaputte Uhr", "den Kupferkessel", "zwei Holzlöffel", "einen leeren Vogelkäfig",
               "den roten Regenschirm", "einen Korb Birnen", "den silbernen Schlüssel", "drei Papierlaternen",
               "eine alte Landkarte", "den gestreiften Schal", "ein Glas Honig", "den gesprungenen Spiegel",
               "zwölf Glasmurmeln", "eine Wolldecke", "den Messingkompass"],
        "es": ["siete tazas azules", "un reloj roto", "la tetera de cobre", "dos cucharas de madera", "una jaula vacía",
               "el paraguas rojo", "una cesta de peras", "la llave de plata", "tres farolillos de papel", "un mapa viejo",
               "la bufanda de rayas", "un tarro de miel", "el espejo rajado", "doce canicas de cristal",
               "una manta de lana", "la brújula de latón"],
    },
    "place": {
        "en": ["behind the bakery", "under the old bridge", "beside the frozen lake", "in the empty theatre",
               "on the north platform", "near the lighthouse", "inside the greenhouse", "at the harbour market",
               "by the chapel wall", "on the roof terrace", "in the orchard", "at the crossroads", "under the pine trees",
               "beside the canal", "in the attic", "near the windmill"],
        "fr": ["derrière la boulangerie", "sous le vieux pont", "près du lac gelé", "dans le théâtre vide",
               "sur le quai nord", "près du phare", "dans la serre", "au marché du port", "contre le mur de la chapelle",
               "sur la terrasse du toit", "dans le verger", "au carrefour", "sous les pins", "au bord du canal",
               "au grenier", "près du moulin"],
        "de": ["hinter der Bäckerei", "unter der alten Brücke", "neben dem gefrorenen See", "im leeren Theater",
               "auf dem Nordbahnsteig", "beim Leuchtturm", "im Gewächshaus", "auf dem Hafenmarkt", "an der Kapellenmauer",
               "auf der Dachterrasse", "im Obstgarten", "an der Kreuzung", "unter den Kiefern", "neben dem Kanal",
               "auf dem Dachboden", "bei der Windmühle"],
        "es": ["detrás de la panadería", "bajo el puente viejo", "junto al lago helado", "en el teatro vacío",
               "en el andén norte", "cerca del faro", "dentro del invernadero", "en el mercado del puerto",
               "junto al muro de la capilla", "en la azotea", "en el huerto", "en el cruce", "bajo los pinos",
               "junto al canal", "en el desván", "cerca del molino"],
    },
    "time": {
        "en": ["every Tuesday at dawn", "before the first snow", "during the long storm", "after the harvest festival",
               "on a foggy Sunday", "at half past nine", "while the bells rang", "last winter", "before breakfast",
               "at midnight", "in early spring", "after the concert", "every other Friday", "on her birthday",
               "during the eclipse", "before the train left"],
        "fr": ["chaque mardi à l'aube", "avant la première neige", "pendant la longue tempête", "après la fête des moissons",
               "un dimanche brumeux", "à neuf heures et demie", "pendant que sonnaient les cloches", "l'hiver dernier",
               "avant le petit-déjeuner", "à minuit", "au début du printemps", "après le concert", "un vendredi sur deux",
               "le jour de son anniversaire", "pendant l'éclipse", "avant le départ du train"],
        "de": ["jeden Dienstag im Morgengrauen", "vor dem ersten Schnee", "während des langen Sturms", "nach dem Erntefest",
               "an einem nebligen Sonntag", "um halb zehn", "während die Glocken läuteten", "letzten Winter",
               "vor dem Frühstück", "um Mitternacht", "im frühen Frühling", "nach dem Konzert", "jeden zweiten Freitag",
               "an ihrem Geburtstag", "während der Finsternis", "bevor der Zug abfuhr"],
        "es": ["cada martes al amanecer", "antes de la primera nevada", "durante la larga tormenta",
               "después de la fiesta de la cosecha", "un domingo de niebla", "a las nueve y media",
               "mientras sonaban las campanas", "el invierno pasado", "antes del desayuno", "a medianoche",
               "a principios de primavera", "después del concierto", "cada dos viernes", "el día de su cumpleaños",
               "durante el eclipse", "antes de que saliera el tren"],
    },
}
SLOT_ORDER = ("subject", "verb", "object", "place", "time")
